"""What a training job is to the shared training run (`runs.lifecycle.run_training`).

A job subclasses `TrainingJob`: it must supply preflight, setup, the trainer, evaluation, saving,
the report and the summary's headline; the other hooks are declared here with the defaults a job
without them gets (no general data to retain, no per-source losses, no headline keys of its own
in eval.json, no warnings of its own, a training loss that says whether training progressed).
Its `setup` returns a `Plan`, built by `training_plan`; the lifecycle hands the job back an
`Outcome`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmtune.recipes.common import Training
from llmtune.runs.rundir import RunDir

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

    def rows_text(self) -> str:
        """`54 train, 6 validation, 30 test`: the row counts as a person writes them."""
        return ", ".join(f"{n} {split}" for split, n in self.rows.items() if n or split == "train")

    @property
    def trainable_share(self) -> float:
        return round(self.trainable_params / max(self.total_params, 1), 6)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        details = out.pop("details")
        out["run_dir"] = str(self.run_dir)
        out["trainable_share"] = self.trainable_share
        return {**out, **details}


def training_plan(
    run_dir: Path,
    *,
    task: str,
    method: str,
    model: str,
    rows: dict[str, int],
    skipped_rows: int,
    parameters: tuple[int, int],
    training: Training,
    training_rows: int,
    device: str,
    details: dict[str, Any],
) -> Plan:
    """The plan of every training job: `parameters` is (trainable, total), `training` the resolved
    settings (`runs.training.resolve_training`) the steps are planned from over `training_rows`
    examples (rows, pairs or completions), `details` the job's own items."""
    from llmtune.runs.training import planned_steps, resolve_precision

    trainable, total = parameters
    return Plan(
        run_dir=run_dir,
        task=task,
        method=method,
        model=model,
        rows=rows,
        skipped_rows=skipped_rows,
        trainable_params=trainable,
        total_params=total,
        planned_steps=planned_steps(training, training_rows),
        device=device,
        precision=resolve_precision(training, device),
        details=details,
    )


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; peft's own count where it applies (right for 4-bit weights)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


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
    retain: dict[str, Metrics | None] | None = None
    """evaluation.retain: {before, after, change} on the general rows."""
    sources: dict[str, Metrics] | None = None
    """Mixtures and replay: per source, its weight, rows drawn and the final model's loss."""
    selection: Metrics | None = None
    """How the kept model was chosen: early stopping, checkpoint, validation rows (runs.selection)."""
    warnings: list[str] = field(default_factory=list)
    """Why the result may not mean much (too few steps, loss not falling, one class predicted...)."""

    def as_dict(self, headline: Callable[[Metrics | None], Any] = lambda m: m) -> dict[str, Any]:
        extra = {name: value for name in ("retain", "sources", "selection") if (value := getattr(self, name))}
        return {
            **self.plan.as_dict(),
            **extra,
            "status": "completed",
            "train_seconds": round(self.train_seconds, 2),
            "train_loss": self.train_loss,
            "steps": self.steps,
            "test_before": headline(self.test_before),
            "validation": self.validation,
            "test": headline(self.test),
            "warnings": self.warnings,
        }


def warnings_markdown(outcome: Outcome) -> list[str]:
    """The report's warnings section (empty when there is nothing to warn about)."""
    if not outcome.warnings:
        return []
    return ["## Warnings", "", *[f"- {w}" for w in outcome.warnings], ""]


class TrainingJob(ABC):
    """What a trainer-based job supplies to `run_training`, step by step."""

    recipe: Any
    loss_is_objective: bool = True
    """False when the training loss says nothing about progress (GRPO's is near zero by
    construction): the lifecycle then does not warn about a loss that did not fall."""

    @abstractmethod
    def preflight(self) -> list[Path]:
        """Read and check the data and the hardware rules, before any model loads; returns the
        data files read (their sha256 goes in the manifest)."""

    @abstractmethod
    def setup(self, run_dir: Path, dry_run: bool = False) -> Plan:
        """Load the model (on a dry run without its weights), apply the tuning method, encode the
        splits; the plan."""

    @abstractmethod
    def trainer(self, run_dir: RunDir) -> Any:
        """The HF / TRL trainer, with the lifecycle's callbacks (`runs.training.callbacks`)."""

    @abstractmethod
    def evaluate(self, trainer: Any) -> Metrics | None:
        """Metrics of the trainer's current model on the test split (None without one)."""

    @abstractmethod
    def save(self, trainer: Any, run_dir: RunDir) -> None:
        """Write model/ (and per-row outputs such as predictions.jsonl)."""

    @abstractmethod
    def report(self, run_dir: RunDir, outcome: Outcome) -> None:
        """Print the results and write report.md."""

    @abstractmethod
    def headline(self, metrics: Metrics | None) -> Any:
        """The part of the test metrics that goes in the summary."""

    def retain(self, trainer: Any) -> Metrics | None:
        """The trainer's current model on evaluation.retain's general rows, measured before and
        after training so that the report shows what was forgotten (None: no such rows)."""
        return None

    def sources(self, trainer: Any) -> dict[str, Metrics] | None:
        """Per data source of a mixture: its rows and the final model's losses (None: one source)."""
        return None

    def eval_headline(self, outcome: Outcome) -> Metrics:
        """Keys put first in eval.json (e.g. the reward stage's pairwise_accuracy)."""
        return {}

    def warnings(self, outcome: Outcome) -> list[str]:
        """The job's own reasons to distrust the result (e.g. a single class predicted)."""
        return []
