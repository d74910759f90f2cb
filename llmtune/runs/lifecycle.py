"""The run every job goes through, and the training run that trainer-based jobs plug into.

`recorded()` is the bookkeeping every run-directory job shares: open the run directory, do the
work, and record how it ended (completed, interrupted, failed) in the manifest.

`run_training()` is the whole life of a training run, by composition: the job (a `TrainingJob`:
finetune's classification and SFT today; distill and the rlhf stages next) supplies preflight,
setup, the trainer, evaluation, saving and the report; the lifecycle does

    lock -> preflight -> setup -> dry run (plan, nothing written) or open -> measure before ->
    train (resume, graceful stop on SIGTERM/SIGINT) -> validate -> evaluate -> save -> report -> status
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from llmtune.console import say, table
from llmtune.errors import Interrupted
from llmtune.recipes.common import RecipeBase
from llmtune.runs.options import JobOptions
from llmtune.runs.rundir import RunDir, run_dir_path

T = TypeVar("T")
Metrics = dict[str, Any]


@dataclass
class Plan:
    """What a training run will do: the --dry-run table and the start of the summary."""

    run_dir: Path
    task: str
    method: str
    model: str
    rows: dict[str, int]
    skipped_rows: int
    trainable_params: int
    total_params: int
    planned_steps: int
    device: str
    precision: str
    details: dict[str, Any] = field(default_factory=dict)
    """Job-specific items (labels, data format), shown in the plan and the summary."""

    @property
    def trainable_share(self) -> float:
        return round(self.trainable_params / max(self.total_params, 1), 6)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        details = out.pop("details")
        out["run_dir"] = str(self.run_dir)
        out["trainable_share"] = self.trainable_share
        return {**out, **details}


@dataclass
class Outcome:
    """How a training run ended: the summary that --json prints and the report reads."""

    plan: Plan
    steps: int
    train_loss: float
    train_seconds: float
    validation: Metrics | None = None
    test_before: Metrics | None = None
    test: Metrics | None = None
    warnings: list[str] = field(default_factory=list)
    """Why the result may not mean much (too few steps, loss not falling, one class predicted...)."""

    def as_dict(self, headline: Callable[[Metrics | None], Any] = lambda m: m) -> dict[str, Any]:
        return {
            **self.plan.as_dict(),
            "status": "completed",
            "train_seconds": round(self.train_seconds, 2),
            "train_loss": self.train_loss,
            "steps": self.steps,
            "test_before": headline(self.test_before),
            "validation": self.validation,
            "test": headline(self.test),
            "warnings": self.warnings,
        }


class TrainingJob(Protocol):
    """What a trainer-based job supplies to `run_training`."""

    recipe: Any

    def preflight(self) -> list[Path]:
        """Read and check the data and the hardware rules, before any model loads; returns the
        data files read (their sha256 goes in the manifest)."""

    def setup(self, run_dir: Path, dry_run: bool = False) -> Plan:
        """Load the model (on a dry run without its weights), apply the tuning method, encode the
        splits; the plan."""

    def trainer(self, run_dir: RunDir) -> Any:
        """The HF / TRL trainer, with the lifecycle's callbacks (`runs.training.callbacks`)."""

    def evaluate(self, trainer: Any) -> Metrics | None:
        """Metrics of the trainer's current model on the test split (None without one)."""

    def save(self, trainer: Any, run_dir: RunDir) -> None:
        """Write model/ (and per-row outputs such as predictions.jsonl)."""

    def report(self, run_dir: RunDir, outcome: Outcome) -> None:
        """Print the results and write report.md."""

    def headline(self, metrics: Metrics | None) -> Any:
        """The part of the test metrics that goes in the summary."""

    # optional: def warnings(self, outcome: Outcome) -> list[str], the job's own reasons to
    # distrust the result (e.g. a single class predicted)


def run_training(job: TrainingJob, options: JobOptions) -> dict[str, Any]:
    """The whole life of one training run; returns the summary (for --json)."""
    from llmtune.runs.training import measured_once, resume_point, validation_metrics, watch_signals

    run_dir = RunDir(run_dir_path(job.recipe, options.output), job.recipe)
    run_dir.claim(resume=options.resume)
    try:
        files = job.preflight()
        plan = job.setup(run_dir.path, dry_run=options.dry_run)
        describe(plan)
        if options.dry_run:
            show_plan(plan.as_dict())
            run_dir.abandon()
            return {"dry_run": True, **plan.as_dict()}
    except BaseException:
        run_dir.abandon()  # bad input (or a signal) before anything was written: no trace
        raise

    def train() -> dict[str, Any]:
        trainer = job.trainer(run_dir)
        before = measured_once(run_dir.path, "test_before", lambda: job.evaluate(trainer))
        if before is not None:
            say(f"test before training: {_shown(before)}")
        started = time.monotonic()
        with watch_signals(trainer):
            result = trainer.train(resume_from_checkpoint=resume_point(run_dir.path, options.resume))
        outcome = Outcome(
            plan,
            steps=result.global_step,
            train_loss=result.training_loss,
            train_seconds=time.monotonic() - started,
            test_before=before,
        )
        if trainer.eval_dataset is not None:
            outcome.validation = validation_metrics(trainer)
        outcome.test = job.evaluate(trainer)
        job.save(trainer, run_dir)
        if outcome.test is not None:
            run_dir.write_json(
                "eval.json", {"split": "test", "metrics": outcome.test, "before_training": before}
            )
        outcome.warnings = training_warnings(outcome, run_dir.path)
        if hasattr(job, "warnings"):  # optional: the job's own reasons to distrust the result
            outcome.warnings += job.warnings(outcome)
        job.report(run_dir, outcome)
        for line in outcome.warnings:
            say(f"warning: {line}")
        return outcome.as_dict(job.headline)

    return recorded(run_dir, options, files, train)


def recorded(
    run_dir: RunDir, options: JobOptions, files: list[Path], work: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Open the run directory, run `work`, and record how it ended in the manifest (a signal
    during `open` itself included)."""
    try:
        run_dir.open(resume=options.resume, data_files=files)
        options.log_file = run_dir.log_file
        summary = work()
    except (Interrupted, KeyboardInterrupt):
        _end(run_dir, "interrupted")
        raise
    except BaseException:
        _end(run_dir, "failed")
        raise
    summary["run_dir"] = str(run_dir.path)
    run_dir.close("completed", summary=summary)
    say(f"run directory: {run_dir.path}")
    if (run_dir.path / "report.md").exists():
        say(f"report: {run_dir.path / 'report.md'}")
    return summary


def _end(run_dir: RunDir, status: str) -> None:
    if run_dir.manifest:
        run_dir.close(status)  # the run began: record how it ended
    else:
        run_dir.abandon()  # refused while opening (bad input): leave no trace


# fewer optimizer steps than this rarely move a pre-trained model far enough to mean anything
FEW_STEPS = 30


def training_warnings(outcome: Outcome, run_dir: Path) -> list[str]:
    """Warnings every training run checks: too few optimizer steps, a loss that did not fall."""
    import json

    out = []
    if outcome.steps < FEW_STEPS:
        out.append(
            f"only {outcome.steps} optimizer steps: too few to learn much; raise training.epochs "
            "(or max_steps), lower training.batch_size, or add data"
        )
    log = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), int | float)]
    if len(losses) >= 2:
        third = max(1, len(losses) // 3)
        first, last = sum(losses[:third]) / third, sum(losses[-third:]) / third
        if last >= first:
            out.append(
                f"the training loss did not go down ({first:.4g} at the start, {last:.4g} at the end): "
                "try another training.learning_rate"
            )
    return out


def warnings_markdown(outcome: Outcome) -> list[str]:
    """The report's warnings section (empty when there is nothing to warn about)."""
    if not outcome.warnings:
        return []
    return ["## Warnings", "", *[f"- {w}" for w in outcome.warnings], ""]


def describe(plan: Plan) -> None:
    """The trainable vs total parameter line every training run prints."""
    say(
        f"{plan.method}: training {plan.trainable_params:,} of {plan.total_params:,} parameters "
        f"({100 * plan.trainable_share:.2f}%) on {plan.device}"
    )


def show_plan(plan: dict[str, Any]) -> None:
    """The --dry-run table."""
    table("plan (dry run: nothing written)", ["item", "value"], [[k, v] for k, v in plan.items()])


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; peft's own count where it applies (right for 4-bit weights)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _shown(metrics: Metrics) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def source_of(recipe: RecipeBase) -> str | None:
    """The recipe file, for error messages."""
    return str(recipe.source) if recipe.source else None
