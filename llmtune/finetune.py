"""`llmtune finetune`: adapt a model on task examples.

Steps (classification): read and check the data, load the model with its head, apply the tuning
method, tokenize, then (unless --dry-run) open the run directory, measure the test split before
training, train with the HF Trainer (validation, early stopping, best checkpoint kept), measure
again, and save a model that loads with plain transformers + peft.

causal_lm SFT lives in `llmtune.sft`, hyperparameter sweeps in `llmtune.sweep`; both reuse the
run frame here (`describe_plan`, `open_and_run`, `interrupted_by`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from llmtune.cli import JobOptions
from llmtune.console import markdown_table, say, table
from llmtune.data import Rows, Splits, check_labels, infer_labels, load_splits
from llmtune.errors import BadInput, Interrupted
from llmtune.methods import apply_method
from llmtune.metrics import classification_metrics, confusion_markdown
from llmtune.models import LoadedModel, count_parameters, load_model, quiet_libraries
from llmtune.recipes.finetune import FinetuneRecipe
from llmtune.rundir import RunDir, run_dir_path
from llmtune.templates import Template
from llmtune.training import (
    callbacks,
    measured_once,
    resolve_precision,
    resume_point,
    training_arguments,
    validation_metrics,
)


def run(recipe: FinetuneRecipe, options: JobOptions) -> dict[str, Any]:
    """Run one fine-tune (or a sweep of them) from a validated recipe; returns the summary."""
    quiet_libraries(options.debug)
    if options.extra.get("sweep") is not None or recipe.sweep is not None:
        from llmtune import sweep

        return sweep.run(recipe, options)
    if recipe.task == "causal_lm":
        from llmtune import sft

        return sft.run(recipe, options)
    run_dir = RunDir(run_dir_path(recipe, str(options.output) if options.output else None), recipe)
    run_dir.check_writable(resume=options.resume)
    splits, labels = setup_classification_data(recipe)
    preflight(recipe)
    loaded = load_model(
        recipe.model,
        recipe,
        head="classification",
        labels=labels,
        corpus=(r["text"] for r in splits.train.rows),
        for_training=True,
    )
    if recipe.method.type == "prompt":
        # the soft prompt is prepended as embeddings, so the head cannot find the last real token
        # past right padding: pad on the left instead
        loaded.tokenizer.padding_side = "left"
    from llmtune.export import snapshot_base

    base = snapshot_base(loaded.model, recipe)
    model = apply_method(loaded.model, recipe.method, "classification", loaded.tokenizer)
    encoded = {
        name: encode_classification(recipe, loaded, getattr(splits, name), labels)
        for name in ("train", "validation", "test")
    }
    plan = describe_plan(recipe, run_dir, loaded, model, splits, extra={"labels": labels})
    if options.dry_run:
        table("plan (dry run: nothing written)", ["item", "value"], [[k, v] for k, v in plan.items()])
        return {"dry_run": True, **plan}
    return open_and_run(
        run_dir,
        options,
        splits.files,
        lambda: _train_and_evaluate(
            recipe, options, run_dir, loaded, model, base, encoded, labels, plan, splits.test
        ),
    )


def describe_plan(
    recipe: FinetuneRecipe,
    run_dir: RunDir,
    loaded: LoadedModel,
    model: Any,
    splits: Splits,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """What the run will do (the --dry-run table and the start of the summary); prints the
    trainable vs total parameter line."""
    trainable, total = count_parameters(model)
    say(
        f"{recipe.method.type}: training {trainable:,} of {total:,} parameters "
        f"({100 * trainable / total:.2f}%) on {loaded.device}"
    )
    return {
        "run_dir": str(run_dir.path),
        "task": recipe.task,
        "method": recipe.method.type,
        "model": recipe.model.describe(),
        **extra,
        "rows": splits.counts(),
        "skipped_rows": splits.train.skipped + splits.validation.skipped + splits.test.skipped,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": round(trainable / total, 6),
        "planned_steps": planned_steps(recipe, len(splits.train)),
        "device": loaded.device,
        "precision": resolve_precision(recipe.training, loaded.device),
    }


def planned_steps(recipe: FinetuneRecipe, train_rows: int) -> int:
    """Optimizer steps the run will take (max_steps, else epochs; fewer when packing or stopping early)."""
    t = recipe.training
    if t.max_steps:
        return t.max_steps
    per_epoch = max(1, math.ceil(train_rows / t.batch_size) // t.grad_accum)
    return math.ceil(t.epochs * per_epoch)


def open_and_run(
    run_dir: RunDir, options: JobOptions, files: list[Any], train: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Open the run directory, run `train`, and record how it ended in the manifest."""
    run_dir.open(resume=options.resume, data_files=files)
    options.log_file = run_dir.log_file
    try:
        summary = train()
    except Interrupted:
        run_dir.close("interrupted")
        raise
    except KeyboardInterrupt:
        run_dir.close("interrupted")
        raise
    except BaseException:
        run_dir.close("failed")
        raise
    summary["run_dir"] = str(run_dir.path)
    run_dir.close("completed", summary=summary)
    return summary


def interrupted_by(trainer: Any) -> None:
    """Raise Interrupted when training stopped on SIGTERM/SIGINT (the checkpoint is saved)."""
    from llmtune.callbacks import GracefulStop

    stop = next(h for h in trainer.callback_handler.callbacks if isinstance(h, GracefulStop))
    if stop.signum is not None:
        raise Interrupted(stop.signum)


def preflight(recipe: FinetuneRecipe) -> None:
    """Hardware rules checked before any model loads."""
    from llmtune.models import pick_device

    device = pick_device(recipe.model.device)
    if recipe.method.type == "qlora" and not device.startswith("cuda"):
        raise BadInput(
            f"qlora needs a CUDA GPU (4-bit bitsandbytes); this run is on {device}. "
            "Use method.type: lora on CPU",
            key="method.type",
        )
    resolve_precision(recipe.training, device)


def setup_classification_data(recipe: FinetuneRecipe) -> tuple[Splits, list[str]]:
    """Rows with text and label; labels given or inferred; every label checked."""
    template = Template(recipe.data.template, where="data.template") if recipe.data.template else None
    required = ("label",) if template else ("text", "label")
    splits = load_splits(recipe, recipe.data, required=required, label_field="label")
    if template is not None:
        template.check_fields(set(splits.train.rows[0]), file=splits.train.where[0].rsplit(":", 1)[0])
    labels = recipe.labels or infer_labels(splits.train)
    if len(labels) < 2:
        raise BadInput(
            f"training rows have only one label ({labels[0]}); classification needs two", key="labels"
        )
    check_labels(splits, labels)
    if not splits.test.rows:
        say("no test split (data.test or data.split.test): only training metrics will be reported")
    return splits, labels


def encode_classification(recipe: FinetuneRecipe, loaded: LoadedModel, rows: Any, labels: list[str]) -> Any:
    """A datasets.Dataset of input_ids / attention_mask / labels for one split."""
    import datasets

    if not rows.rows:
        return None
    template = Template(recipe.data.template, where="data.template") if recipe.data.template else None
    texts = [template.render(r) if template else str(r["text"]) for r in rows.rows]
    enc = loaded.tokenizer(texts, truncation=True, max_length=recipe.data.max_length)
    index = {name: i for i, name in enumerate(labels)}
    return datasets.Dataset.from_dict(
        {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": [index[str(r["label"])] for r in rows.rows],
        }
    )


def _train_and_evaluate(
    recipe: FinetuneRecipe,
    options: JobOptions,
    run_dir: RunDir,
    loaded: LoadedModel,
    model: Any,
    base: Any,
    encoded: dict[str, Any],
    labels: list[str],
    plan: dict[str, Any],
    test_rows: Rows,
) -> dict[str, Any]:
    from transformers import DataCollatorWithPadding, Trainer

    has_validation = encoded["validation"] is not None
    args = training_arguments(
        recipe.training, run_dir.path, device=loaded.device, seed=recipe.seed, has_validation=has_validation
    )
    hooks = callbacks(recipe.training, run_dir, has_validation)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        data_collator=DataCollatorWithPadding(loaded.tokenizer),
        compute_metrics=_eval_metrics(labels),
        callbacks=hooks,
    )
    from llmtune.callbacks import keep_stdout_clean

    keep_stdout_clean(trainer)
    resume_from = resume_point(run_dir.path, options.resume)
    before = None
    if encoded["test"] is not None:
        before = measured_once(run_dir.path, "test_before", lambda: predict(trainer, encoded["test"], labels))
        say(f"test before training: accuracy {before['accuracy']:.4f}, f1 {before['f1']:.4f}")
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.monotonic() - started
    interrupted_by(trainer)
    validation = None
    if has_validation:
        validation = validation_metrics(trainer)
    after = None
    if encoded["test"] is not None:
        after, probabilities = predict_rows(trainer, encoded["test"], labels)
        write_predictions(run_dir, test_rows, probabilities, labels)
    from llmtune.export import save_trained_model

    save_trained_model(
        trainer.model,
        loaded,
        run_dir.path / "model",
        recipe,
        labels=labels,
        merge=recipe.export.merge_adapter,
        base=base,
    )
    summary = {
        **plan,
        "status": "completed",
        "train_seconds": round(train_seconds, 2),
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "test_before": _headline(before),
        "validation": validation,
        "test": _headline(after),
    }
    if after is not None:
        run_dir.write_json("eval.json", {"split": "test", "metrics": after, "before_training": before})
    from llmtune.plots import training_curves

    run_dir.write_text("report.md", _report(recipe, summary, before, after) + training_curves(run_dir.path))
    _print_results(before, after)
    return summary


def _eval_metrics(labels: list[str]) -> Any:
    def compute(prediction: Any) -> dict[str, float]:
        predicted = prediction.predictions
        predicted = predicted[0] if isinstance(predicted, tuple) else predicted
        gold = [labels[i] for i in prediction.label_ids]
        chosen = [labels[i] for i in predicted.argmax(-1)]
        m = classification_metrics(gold, chosen, labels)
        return {k: m[k] for k in ("accuracy", "precision", "recall", "f1")}

    return compute


def predict(trainer: Any, dataset: Any, labels: list[str]) -> dict[str, Any]:
    """Classification metrics of the trainer's current model on `dataset`."""
    return predict_rows(trainer, dataset, labels)[0]


def predict_rows(trainer: Any, dataset: Any, labels: list[str]) -> tuple[dict[str, Any], list[list[float]]]:
    """Metrics on `dataset`, and each row's probability per label."""
    import torch

    out = trainer.predict(dataset, metric_key_prefix="test")
    logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
    gold = [labels[i] for i in out.label_ids]
    metrics = classification_metrics(gold, [labels[i] for i in logits.argmax(-1)], labels)
    return metrics, torch.softmax(torch.as_tensor(logits).float(), dim=-1).tolist()


def write_predictions(
    run_dir: RunDir, rows: Rows, probabilities: list[list[float]], labels: list[str]
) -> None:
    """predictions.jsonl: each test row's id, text, gold label, prediction and probabilities, to
    see which rows the model gets wrong."""
    import json

    lines = []
    for i, (row, probs) in enumerate(zip(rows.rows, probabilities, strict=True)):
        best = max(range(len(labels)), key=lambda j: probs[j])
        record = {
            "id": row.get("id", i),
            "text": row.get("text"),
            "gold": str(row["label"]),
            "prediction": labels[best],
            "scores": dict(zip(labels, probs, strict=True)),
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    run_dir.write_text("predictions.jsonl", "".join(lines))


def _headline(metrics: dict[str, Any] | None) -> dict[str, float] | None:
    if metrics is None:
        return None
    return {k: round(metrics[k], 4) for k in ("accuracy", "precision", "recall", "f1")}


def _print_results(before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    if after is None:
        return
    rows = [
        [name, before[name] if before else "-", after[name]]
        for name in ("accuracy", "precision", "recall", "f1")
    ]
    table("test metrics (macro)", ["metric", "before training", "after training"], rows)


def _report(
    recipe: FinetuneRecipe,
    summary: dict[str, Any],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> str:
    lines = [
        f"# {recipe.name}: finetune ({recipe.task}, {recipe.method.type})",
        "",
        f"- model: `{summary['model']}`",
        f"- trainable parameters: {summary['trainable_params']:,} of {summary['total_params']:,} "
        f"({100 * summary['trainable_share']:.2f}%)",
        f"- rows: {summary['rows']}",
        f"- steps: {summary['steps']}, training time: {summary['train_seconds']} s on {summary['device']}",
        "",
    ]
    if after is not None:
        rows = [
            [m, before[m] if before else "-", after[m]] for m in ("accuracy", "precision", "recall", "f1")
        ]
        lines += [
            "## Test split (macro averages)",
            "",
            markdown_table(["metric", "before training", "after training"], rows),
            "## Per class",
            "",
            markdown_table(
                ["label", "precision", "recall", "f1", "support"],
                [
                    [label, s["precision"], s["recall"], s["f1"], s["support"]]
                    for label, s in after["per_class"].items()
                ],
            ),
            "## Confusion matrix (after training)",
            "",
            confusion_markdown(after),
        ]
    return "\n".join(lines)
