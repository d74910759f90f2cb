"""`llmtune finetune` with `task: classification`: a classification head on a model.

Reads top to bottom: read and check the rows and labels (`preflight`), load the model with its
head, apply the tuning method and tokenize (`setup`), build the HF Trainer (`trainer`), measure
the test split (`evaluate`), save a model that loads with plain transformers + peft and the
test predictions (`save`), and write the report (`report`). The shared training run
(`llmtune.runs.lifecycle.run_training`) calls these in order, with the lock, dry run, resume,
graceful stop and status around them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llmtune.jobs.finetune.heads as heads
from llmtune.console import markdown_table, table
from llmtune.data.labels import check_labels, infer_labels
from llmtune.data.readers import Splits
from llmtune.data.templates import Template, template_of
from llmtune.errors import BadInput
from llmtune.metrics import classification_metrics, confusion_markdown
from llmtune.recipes.finetune import FinetuneRecipe
from llmtune.runs.job import Metrics, Outcome, Plan, TrainingJob
from llmtune.runs.lifecycle import run_training
from llmtune.runs.options import JobOptions
from llmtune.runs.rundir import RunDir
from llmtune.runs.training import preflight

HEADLINE = ("accuracy", "precision", "recall", "f1")


def run(recipe: FinetuneRecipe, options: JobOptions) -> dict[str, Any]:
    """Train a classification head from a validated recipe; returns the summary (for --json)."""
    return run_training(ClassificationJob(recipe), options)


class ClassificationJob(TrainingJob):
    """The classification steps the shared training run calls, in order."""

    def __init__(self, recipe: FinetuneRecipe) -> None:
        self.recipe = recipe
        self.template = template_of(recipe.data.template, rendered=recipe.data.is_composite())

    def preflight(self) -> list[Path]:
        self.splits, self.labels = read_data(self.recipe, self.template)
        self.device = preflight(self.recipe.model, self.recipe.method.type, self.recipe.training)
        return self.splits.files

    def setup(self, run_dir: Path, dry_run: bool = False) -> Plan:
        index = {name: i for i, name in enumerate(self.labels)}

        def target(row: dict[str, Any]) -> int:
            return index[str(row["label"])]

        self.prepared = heads.prepare(
            self.recipe, self.splits, self.template, labels=self.labels, target=target, dry_run=dry_run
        )
        self.retain_data = heads.encode_retain(self.recipe, self.splits, self.template, self.prepared, target)
        return heads.plan(run_dir, self.recipe, self.splits, self.prepared, {"labels": self.labels})

    def trainer(self, run_dir: RunDir) -> Any:
        return heads.build_trainer(self.recipe, self.prepared, run_dir, eval_metrics(self.labels))

    def retain(self, trainer: Any) -> Metrics | None:
        return heads.retain_metrics(trainer, self.retain_data)

    def sources(self, trainer: Any) -> dict[str, Metrics] | None:
        return heads.source_losses(trainer, self.splits, self.prepared) if self.splits.sources else None

    def evaluate(self, trainer: Any) -> Metrics | None:
        if self.prepared.encoded["test"] is None:
            return None
        metrics, self.probabilities = predict(trainer, self.prepared.encoded["test"], self.labels)
        gold = [str(row["label"]) for row in self.splits.test.rows]
        chosen = [
            prediction(g, probs, self.labels)["prediction"] for g, probs in zip(gold, self.probabilities)
        ]

        def measure(indices: list[int]) -> Metrics:
            return classification_metrics(
                [gold[i] for i in indices], [chosen[i] for i in indices], self.labels
            )

        return heads.with_slices(self.recipe, self.splits.test, metrics, measure)

    def save(self, trainer: Any, run_dir: RunDir) -> None:
        encoded = self.prepared.encoded
        self.validation_predicted = None
        if encoded["validation"] is not None:
            self.validation_predicted = predict(trainer, encoded["validation"], self.labels)[0][
                "predicted_labels"
            ]
        if encoded["test"] is not None:
            results = [
                prediction(str(row["label"]), probs, self.labels)
                for row, probs in zip(self.splits.test.rows, self.probabilities, strict=True)
            ]
            heads.write_predictions(run_dir, self.splits.test, self.template, results)
        heads.save_model(trainer, self.prepared, run_dir, self.recipe, self.labels)

    def report(self, run_dir: RunDir, outcome: Outcome) -> None:
        from llmtune.runs.plots import training_curves

        if outcome.test is not None:
            table("test metrics (macro)", ["metric", "before training", "after training"], _rows(outcome))
        run_dir.write_text("report.md", _report(self.recipe, outcome) + training_curves(run_dir.path))

    def headline(self, metrics: Metrics | None) -> dict[str, Any] | None:
        if metrics is None:
            return None
        return {**heads.rounded(metrics, HEADLINE), "accuracy_ci95": metrics["accuracy_ci95"]}

    def warnings(self, outcome: Outcome) -> list[str]:
        return classification_warnings(outcome.test, self.validation_predicted)


# a 95% interval wider than this means the test split is too small to tell runs apart
WIDE_INTERVAL = 0.2


def classification_warnings(test: Metrics | None, validation_predicted: list[str] | None) -> list[str]:
    """One class predicted for every row; a test split too small for its accuracy to mean much."""
    out = []
    for split, predicted in (
        ("test", test and test["predicted_labels"]),
        ("validation", validation_predicted),
    ):
        if predicted is not None and len(predicted) == 1:
            out.append(
                f"the model predicts {predicted[0]!r} for every {split} row: it has not learned to tell "
                "the labels apart (more steps, another learning rate, or more data)"
            )
            break
    if test is not None and test.get("accuracy_ci95"):
        low, high = test["accuracy_ci95"]
        if high - low > WIDE_INTERVAL:
            out.append(
                f"the test split has only {test['n']} rows: accuracy {test['accuracy']:.3f} means anything "
                f"from {low:.2f} to {high:.2f} (95% Wilson interval); use more test rows to compare runs"
            )
    return out


def read_data(recipe: FinetuneRecipe, template: Template | None) -> tuple[Splits, list[str]]:
    """Rows with text and label; labels given or inferred; every label checked."""
    splits = heads.read_rows(recipe, template)
    labels = recipe.labels or infer_labels(splits.train)
    if len(labels) < 2:
        raise BadInput(
            f"training rows have only one label ({labels[0]}); classification needs two", key="labels"
        )
    check_labels(splits, labels)
    return splits, labels


def eval_metrics(labels: list[str]) -> Any:
    """The Trainer's compute_metrics: macro metrics on the validation split."""

    def compute(prediction: Any) -> dict[str, float]:
        predicted = prediction.predictions
        predicted = predicted[0] if isinstance(predicted, tuple) else predicted
        gold = [labels[i] for i in prediction.label_ids]
        chosen = [labels[i] for i in predicted.argmax(-1)]
        m = classification_metrics(gold, chosen, labels)
        return {k: m[k] for k in HEADLINE}

    return compute


def predict(trainer: Any, dataset: Any, labels: list[str]) -> tuple[Metrics, list[list[float]]]:
    """Metrics of the trainer's current model on `dataset`, and each row's probability per label."""
    import torch

    logits, label_ids = heads.head_outputs(trainer, dataset)
    gold = [labels[i] for i in label_ids]
    metrics = classification_metrics(gold, [labels[i] for i in logits.argmax(-1)], labels)
    return metrics, torch.softmax(torch.as_tensor(logits).float(), dim=-1).tolist()


def prediction(gold: str, probabilities: list[float], labels: list[str]) -> dict[str, Any]:
    """A predictions.jsonl row's result: gold label, predicted label, probability per label."""
    best = max(range(len(labels)), key=lambda j: probabilities[j])
    return {"gold": gold, "prediction": labels[best], "scores": dict(zip(labels, probabilities, strict=True))}


def _rows(outcome: Outcome) -> list[list[Any]]:
    rows = heads.before_after(HEADLINE, outcome)
    interval = [(m or {}).get("accuracy_ci95") for m in (outcome.test_before, outcome.test)]
    rows.insert(1, ["accuracy 95% CI", *(f"[{i[0]:.3f}, {i[1]:.3f}]" if i else "-" for i in interval)])
    return rows


def _report(recipe: FinetuneRecipe, outcome: Outcome) -> str:
    lines = heads.report_header(recipe, outcome)
    after = outcome.test
    if after is not None:
        lines += [
            "## Test split (macro averages)",
            "",
            markdown_table(["metric", "before training", "after training"], _rows(outcome)),
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
            *heads.slices_section(after),
        ]
    return "\n".join(lines)
