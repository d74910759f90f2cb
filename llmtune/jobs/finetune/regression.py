"""`llmtune finetune` with `task: regression`: a head with one output that predicts a number (a
rating, a toxicity score, a price).

Reads like classification.py, with which it shares rows, model, trainer and predictions file
(`heads`): check that every label is a number (`preflight`, exit 2 naming file:line otherwise),
load the model with a one-output head and scale labels to 0..1 of `label_range` when given
(`setup`), train on MSE or Huber loss (`trainer`), measure MAE / RMSE / R² / Pearson / Spearman on
the test split (`evaluate`), write predictions.jsonl and the model (`save`), and report.md with a
predicted-vs-true scatter plot (`report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llmtune.jobs.finetune.heads as heads
from llmtune.console import markdown_table, table
from llmtune.data.numeric import numeric_label
from llmtune.data.readers import SKIP_HINT, SPLIT_NAMES, Row, Rows, Splits, refuse
from llmtune.data.templates import template_of
from llmtune.errors import BadInput, Problem
from llmtune.metrics import lower_is_better, regression_metrics
from llmtune.models.regression_head import LABEL_RANGE, from_unit, to_unit
from llmtune.recipes.finetune import REGRESSION_METRICS, FinetuneRecipe
from llmtune.runs.job import Metrics, Outcome, Plan, TrainingJob
from llmtune.runs.lifecycle import run_training
from llmtune.runs.options import JobOptions
from llmtune.runs.rundir import RunDir
from llmtune.runs.training import preflight

HEAD_LABELS = ["score"]  # the one output's name in config.json (id2label)


def run(recipe: FinetuneRecipe, options: JobOptions) -> dict[str, Any]:
    """Train a regression head from a validated recipe; returns the summary (for --json)."""
    return run_training(RegressionJob(recipe), options)


class RegressionJob(TrainingJob):
    """The regression steps the shared training run calls, in order."""

    def __init__(self, recipe: FinetuneRecipe) -> None:
        self.recipe = recipe
        self.template = template_of(recipe.data.template, rendered=recipe.data.is_composite())
        self.label_range = recipe.label_range

    def preflight(self) -> list[Path]:
        self.splits = heads.read_rows(self.recipe, self.template)
        check_numeric_labels(self.splits, self.label_range)
        self.device = preflight(self.recipe.model, self.recipe.method.type, self.recipe.training)
        return self.splits.files

    def setup(self, run_dir: Path, dry_run: bool = False) -> Plan:
        self.prepared = heads.prepare(
            self.recipe,
            self.splits,
            self.template,
            labels=HEAD_LABELS,
            target=self.target,
            dry_run=dry_run,
            problem_type="regression",
        )
        if self.label_range is not None:  # in config.json: whoever runs the model scales back
            setattr(self.prepared.loaded.model.config, LABEL_RANGE, list(self.label_range))
        self.retain_data = heads.encode_retain(
            self.recipe, self.splits, self.template, self.prepared, self.target
        )
        details = {"loss": self.recipe.loss, "label_range": self.label_range}
        return heads.plan(run_dir, self.recipe, self.splits, self.prepared, details)

    def target(self, row: Row) -> float:
        """What the head learns for a row: its label, scaled to 0..1 of label_range when given."""
        return to_unit(numeric_label(row), self.label_range)

    def retain(self, trainer: Any) -> Metrics | None:
        return heads.retain_metrics(trainer, self.retain_data)

    def sources(self, trainer: Any) -> dict[str, Metrics] | None:
        return heads.source_losses(trainer, self.splits, self.prepared) if self.splits.sources else None

    def trainer(self, run_dir: RunDir) -> Any:
        training = self.prepared.training
        watched = training.early_stopping.metric if training.early_stopping else "eval_loss"
        return heads.build_trainer(
            self.recipe,
            self.prepared,
            run_dir,
            eval_metrics(self.label_range),
            compute_loss=huber_loss(self.label_range) if self.recipe.loss == "huber" else None,
            # mae and rmse fall as the model gets better; the shared arguments assume only a
            # loss does, so the direction is set here for the best checkpoint and early stopping
            extra_args={"greater_is_better": not lower_is_better(watched)}
            if self.prepared.encoded["validation"] is not None
            else None,
        )

    def evaluate(self, trainer: Any) -> Metrics | None:
        if self.prepared.encoded["test"] is None:
            return None
        self.predicted = self.predict(trainer, "test")
        gold, predicted = golds(self.splits.test), self.predicted

        def measure(indices: list[int]) -> Metrics:
            return regression_metrics([gold[i] for i in indices], [predicted[i] for i in indices])

        return heads.with_slices(self.recipe, self.splits.test, measure(list(range(len(gold)))), measure)

    def predict(self, trainer: Any, split: str) -> list[float]:
        """The current model's prediction for each row of `split`, in the label's units."""
        outputs, _ = heads.head_outputs(trainer, self.prepared.encoded[split])
        return [from_unit(float(v), self.label_range) for v in outputs.reshape(-1)]

    def save(self, trainer: Any, run_dir: RunDir) -> None:
        self.validation_predicted = None
        if self.prepared.encoded["validation"] is not None:
            self.validation_predicted = self.predict(trainer, "validation")
        if self.prepared.encoded["test"] is not None:
            results = [
                {"gold": gold, "prediction": predicted}
                for gold, predicted in zip(golds(self.splits.test), self.predicted, strict=True)
            ]
            heads.write_predictions(run_dir, self.splits.test, self.template, results)
        heads.save_model(trainer, self.prepared, run_dir, self.recipe, HEAD_LABELS)

    def report(self, run_dir: RunDir, outcome: Outcome) -> None:
        from llmtune.runs.plots import predicted_vs_true, training_curves

        names = self.recipe.metric_names()
        lines = heads.report_header(self.recipe, outcome)
        if outcome.test is not None:
            rows = heads.before_after(names, outcome)
            table("test metrics", ["metric", "before training", "after training"], rows)
            lines += [
                "## Test split",
                "",
                markdown_table(["metric", "before training", "after training"], rows),
                predicted_vs_true(run_dir.path, golds(self.splits.test), self.predicted),
                *heads.slices_section(outcome.test),
            ]
        curves = training_curves(run_dir.path, scores=("eval_r2", "eval_pearson"))
        run_dir.write_text("report.md", "\n".join(lines) + curves)

    def headline(self, metrics: Metrics | None) -> dict[str, Any] | None:
        if metrics is None:
            return None
        return {**heads.rounded(metrics, self.recipe.metric_names()), "n": metrics["n"]}

    def warnings(self, outcome: Outcome) -> list[str]:
        test_predicted = self.predicted if outcome.test is not None else None
        return regression_warnings(outcome.test, test_predicted, self.validation_predicted)


def regression_warnings(
    test: Metrics | None, test_predicted: list[float] | None, validation_predicted: list[float] | None
) -> list[str]:
    """One score predicted for every row; a model worse than always predicting the mean."""
    out = []
    for split, predicted in (("test", test_predicted), ("validation", validation_predicted)):
        if predicted and len(predicted) > 1 and len(set(predicted)) == 1:
            out.append(
                f"the model predicts {predicted[0]:.4g} for every {split} row: it has not learned to tell "
                "the rows apart (more steps, another learning rate, or more data)"
            )
            break
    if test is not None and test.get("r2") is not None and test["r2"] < 0:
        out.append(
            f"R² is {test['r2']:.3f} on the test split: the model predicts worse than always answering "
            "the test labels' mean"
        )
    return out


def golds(rows: Rows) -> list[float]:
    """The labels of checked rows, as numbers."""
    return [numeric_label(r) for r in rows.rows]


def check_numeric_labels(splits: Splits, label_range: tuple[float, float] | None) -> None:
    """Every label is a finite number (inside label_range when given), else exit 2 naming each bad
    row's file:line; with data.skip_bad_rows such rows are dropped and counted instead, unless a
    split would be left empty. Training needs at least two different labels."""
    bad: list[Problem] = []
    for name in (*SPLIT_NAMES, "retain"):  # retain rows are scored by the same head
        rows: Rows = getattr(splits, name)
        problems = {
            i: problem for i, row in enumerate(rows.rows) if (problem := _label_problem(row, label_range))
        }
        if not problems:
            continue
        if splits.skip_bad_rows and len(problems) < len(rows):
            good = [i for i in range(len(rows)) if i not in problems]
            rows.rows[:], rows.where[:] = [rows.rows[i] for i in good], [rows.where[i] for i in good]
            rows.skipped += len(problems)
            continue
        bad += [Problem(problem, file=rows.where[i], key="label") for i, problem in problems.items()]
    if bad:
        refuse(bad, f"{len(bad)} bad row(s): {SKIP_HINT}")
    values = set(golds(splits.train))
    if len(values) < 2:
        raise BadInput(
            f"every training row has the label {values.pop():g}: regression needs labels that vary",
            key="label",
        )


def _label_problem(row: Row, label_range: tuple[float, float] | None) -> str | None:
    try:
        value = numeric_label(row)
    except ValueError as exc:
        return str(exc)
    if label_range is not None and not label_range[0] <= value <= label_range[1]:
        return f"{value:g} is outside label_range [{label_range[0]:g}, {label_range[1]:g}]"
    return None


def eval_metrics(label_range: tuple[float, float] | None) -> Any:
    """The Trainer's compute_metrics: the regression metrics on the validation split, in the
    label's units."""

    def compute(prediction: Any) -> dict[str, float]:
        outputs = prediction.predictions
        outputs = outputs[0] if isinstance(outputs, tuple) else outputs
        predicted = [from_unit(float(v), label_range) for v in outputs.reshape(-1)]
        gold = [from_unit(float(v), label_range) for v in prediction.label_ids.reshape(-1)]
        metrics = regression_metrics(gold, predicted)
        # the Trainer compares numbers: an undefined correlation (constant predictions) is none
        return {k: metrics[k] if metrics[k] is not None else 0.0 for k in REGRESSION_METRICS}

    return compute


def huber_loss(label_range: tuple[float, float] | None) -> Any:
    """The Trainer's compute_loss_func for `loss: huber`: squared error for errors under one unit
    of the label (e.g. one star), absolute error beyond, so that a few outliers pull less."""
    delta = 1.0 / (label_range[1] - label_range[0]) if label_range else 1.0

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        import torch

        predicted = outputs.logits.reshape(-1).float()
        return torch.nn.functional.huber_loss(predicted, labels.reshape(-1).float(), delta=delta)

    return loss
