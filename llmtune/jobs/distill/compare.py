"""Teacher and student side by side: parameters, size on disk, latency and throughput measured on
the same test rows (same batch size, alternating, best of a few rounds), test metrics, the share
of the teacher's quality the student keeps, and the same student trained on gold labels alone
(the baseline that shows what distillation bought). Writes report.md and extends eval.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmtune.console import markdown_table, say, table
from llmtune.models.loading import LoadedModel, resolve_model_path
from llmtune.recipes.distill import DistillRecipe
from llmtune.runs.job import Metrics, Outcome, warnings_markdown
from llmtune.runs.rundir import RunDir

ROUNDS = 5  # passes over each batch per model, alternating models; the fastest pass counts
WEIGHT_FILES = (".safetensors", ".bin")


def train_baseline(job: Any, run_dir: RunDir) -> Metrics | None:
    """The same student, built afresh, trained with cross-entropy on the transfer rows that have
    gold labels (same training settings); its test metrics. None without gold rows."""
    from llmtune.jobs.distill.losses import Collator, DistillationTrainer
    from llmtune.runs.callbacks import keep_stdout_clean
    from llmtune.runs.training import resolve_training, training_arguments

    full = job.encode("train", job.student, job.teacher_labels)
    gold_rows = job.gold_indices()
    if not gold_rows:
        say("baseline skipped: no transfer row has a gold label")
        return None
    student = job.build_student()
    train = full.select(gold_rows)
    settings = resolve_training(job.recipe.training, "full", "classification", len(gold_rows))
    say(f"baseline: the same student trained on the {len(gold_rows)} gold-labelled rows alone")
    started = time.monotonic()
    trainer = DistillationTrainer(
        model=student.model,
        args=training_arguments(
            settings,
            run_dir.path / "checkpoints" / "baseline",
            device=student.device,
            seed=job.recipe.seed,
            has_validation=False,
            extra={"remove_unused_columns": False, "label_names": ["gold"], "save_strategy": "no"},
        ),
        train_dataset=train,
        data_collator=Collator(student.tokenizer),
        temperature=1.0,
        alpha=0.0,  # gold labels only
        hard=False,
    )
    keep_stdout_clean(trainer)
    result = trainer.train()
    logits = trainer.predict(job.encoded["test"]).predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    from llmtune.metrics import classification_metrics

    gold = [str(r["label"]) for r in job.splits.test.rows]
    metrics = classification_metrics(gold, [job.labels[int(i)] for i in logits.argmax(-1)], job.labels)
    metrics.update(
        rows=len(gold_rows), steps=result.global_step, train_seconds=round(time.monotonic() - started, 2)
    )
    say(f"baseline: test accuracy {metrics['accuracy']:.4f} after {result.global_step} steps")
    return metrics


def measure_speed(
    models: dict[str, LoadedModel], texts: list[str], batch_size: int, max_length: int
) -> dict[str, dict[str, Any]]:
    """Latency per row and rows/s of each model over `texts` (tokenizing included) at the
    recipe's batch size and max_length. Each batch is timed for every model in turn, ROUNDS times;
    a model's time is the sum over batches of its fastest pass over each batch. On a shared
    machine other work only ever adds time, so the per-batch minimum of alternating passes
    compares the models on equal terms even when a burst of load hits one whole round."""
    import torch

    batches = [texts[start : start + batch_size] for start in range(0, len(texts), batch_size)]
    for loaded in models.values():
        _forward(loaded, batches[0], max_length)  # warm-up: first-call allocations, thread pools
    best = {name: [float("inf")] * len(batches) for name in models}
    for _ in range(ROUNDS):
        for i, batch in enumerate(batches):
            for name, loaded in models.items():
                best[name][i] = min(best[name][i], _forward(loaded, batch, max_length))
    n = len(texts)
    say(f"speed measured on {n} test rows, batch size {batch_size}, fastest of {ROUNDS} passes per batch")
    return {
        name: {
            "ms_per_row": round(1000 * sum(times) / n, 3),
            "rows_per_s": round(n / sum(times), 1),
            "rows": n,
            "batch_size": batch_size,
            "max_length": max_length,
            "threads": torch.get_num_threads(),
        }
        for name, times in best.items()
    }


def _forward(loaded: LoadedModel, batch: list[str], max_length: int) -> float:
    """Seconds to tokenize one batch and run the model on it."""
    import torch

    model = loaded.model.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        tokens = loaded.tokenizer(
            batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        model(**{k: v.to(loaded.device) for k, v in tokens.items()})
        if loaded.device.startswith("cuda"):
            torch.cuda.synchronize()
    return time.perf_counter() - started


def weights_bytes(folder: Path | None) -> int | None:
    """Bytes of the weight files in a model folder (None for a model not on disk)."""
    if folder is None or not folder.is_dir():
        return None
    return sum(f.stat().st_size for f in folder.rglob("*") if f.suffix in WEIGHT_FILES and f.is_file())


def teacher_folders(recipe: DistillRecipe) -> list[Path]:
    ref = recipe.teacher
    if ref.scratch is not None:
        return []
    folders = [Path(resolve_model_path(ref, recipe, "teacher"))]
    return folders + ([recipe.resolve_path(ref.adapter)] if ref.adapter else [])


def disk_sizes(recipe: DistillRecipe, student_folder: Path) -> tuple[int | None, int | None]:
    """Bytes of weights on disk: the teacher's (its folders together; None without one) and the
    student's."""
    folders = teacher_folders(recipe)
    teacher_disk = sum(weights_bytes(f) or 0 for f in folders) if folders else None
    return teacher_disk, weights_bytes(student_folder)


def side_by_side(
    recipe: DistillRecipe,
    sizes: dict[str, Any],
    teacher: Metrics,
    student: Metrics,
    baseline: Metrics | None,
    speed: dict[str, dict[str, Any]],
    student_folder: Path,
) -> dict[str, Any]:
    """The comparison that eval.json, report.md and the summary show."""
    teacher_disk, student_disk = disk_sizes(recipe, student_folder)

    def entry(
        params: int | None, disk: int | None, metrics: Metrics, timing: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "params": params,
            "size_mb": round(disk / 2**20, 2) if disk is not None else None,
            "ms_per_row": timing and timing["ms_per_row"],
            "rows_per_s": timing and timing["rows_per_s"],
            "accuracy": round(metrics["accuracy"], 4),
            "f1": round(metrics["f1"], 4),
            "quality_kept": ratio(metrics["accuracy"], teacher["accuracy"]),
        }

    return {
        "teacher": entry(sizes["teacher_params"], teacher_disk, teacher, speed["teacher"]),
        "student": entry(sizes["student_params"], student_disk, student, speed["student"]),
        "baseline": entry(sizes["student_params"], None, baseline, None) if baseline else None,
        "baseline_rows": baseline["rows"] if baseline else None,
        "size_ratio": ratio(sizes["student_params"], sizes["teacher_params"]),
        "disk_ratio": ratio(student_disk, teacher_disk),
        "speedup": ratio(speed["student"]["rows_per_s"], speed["teacher"]["rows_per_s"]),
        "quality_kept": ratio(student["accuracy"], teacher["accuracy"]),
        "teacher_agreement": round(student["teacher_agreement"], 4),
        "measured_on": {k: speed["teacher"][k] for k in ("rows", "batch_size", "max_length", "threads")},
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded, None when either is missing or b is 0."""
    return round(a / b, 4) if a is not None and b else None


COLUMNS = [
    "model",
    "parameters",
    "size MB",
    "ms/row",
    "rows/s",
    "accuracy",
    "f1",
    "share of teacher accuracy",
]


def _rows(comparison: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name in ("teacher", "student", "baseline"):
        e = comparison.get(name)
        if e:
            shown = "student on gold labels only" if name == "baseline" else name
            rows.append(
                [
                    shown,
                    e["params"],
                    e["size_mb"],
                    e["ms_per_row"],
                    e["rows_per_s"],
                    e["accuracy"],
                    e["f1"],
                    "-" if e["quality_kept"] is None else f"{100 * e['quality_kept']:.1f}%",
                ]
            )
    return rows


def headline(comparison: dict[str, Any]) -> str:
    """One sentence: what the student keeps at what size and speed."""
    return (
        f"the student keeps {100 * (comparison['quality_kept'] or 0):.1f}% of the teacher's test accuracy "
        f"with {100 * (comparison['size_ratio'] or 0):.1f}% of its parameters at "
        f"{comparison['speedup'] or 0:.2f}x its rows/s"
    )


def write_comparison(
    run_dir: RunDir, outcome: Outcome, comparison: dict[str, Any], extra: dict[str, Any]
) -> None:
    """eval.json (the lifecycle's keys, then `extra`, then the comparison) and the comparison in
    the run's summary (--json)."""
    run_dir.write_json(
        "eval.json",
        {
            "split": "test",
            "metrics": outcome.test,
            "before_training": outcome.test_before,
            **extra,
            "comparison": comparison,
        },
    )
    outcome.plan.details["distillation"] = comparison  # the summary is built from the plan after this


def report_head(recipe: DistillRecipe, outcome: Outcome, headline: str, settings: str) -> list[str]:
    """report.md's first lines: the run, teacher and student, the `headline`, the distill
    `settings` with the rows, and the training's steps and time."""
    plan = outcome.plan
    return [
        f"# {recipe.name}: distill ({recipe.task}, {recipe.strategy})",
        "",
        f"- teacher: `{recipe.teacher.describe()}`",
        f"- student: {recipe.student.describe()}",
        f"- {headline}",
        f"- {settings}; rows: {plan.rows_text()}",
        f"- steps: {outcome.steps}, training time: {outcome.train_seconds:.2f} s on {plan.device}",
    ]


def report(
    recipe: DistillRecipe,
    run_dir: RunDir,
    outcome: Outcome,
    comparison: dict[str, Any],
    extra: dict[str, Any],
) -> None:
    """Terminal table, report.md, eval.json (the lifecycle's keys plus teacher, baseline and the
    comparison), and the comparison in the run's summary (--json)."""
    table("teacher vs student (test split)", COLUMNS, _rows(comparison))
    say(headline(comparison))
    write_comparison(run_dir, outcome, comparison, extra)
    measured = comparison["measured_on"]
    lines = [
        *report_head(
            recipe, outcome, headline(comparison), f"temperature {recipe.temperature}, alpha {recipe.alpha}"
        ),
        f"- speed: {measured['rows']} test rows, batch size {measured['batch_size']}, max_length "
        f"{measured['max_length']}, {measured['threads']} torch threads, tokenizing included; each batch "
        f"run by teacher and student in turn {ROUNDS} times, the fastest pass counts",
        "",
        *warnings_markdown(outcome),
        "## Teacher vs student",
        "",
        markdown_table(COLUMNS, _rows(comparison)),
        f"The student agrees with the teacher on {100 * comparison['teacher_agreement']:.1f}% of the test rows.",
        "",
    ]
    run_dir.write_text("report.md", "\n".join(lines))
