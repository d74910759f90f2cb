"""`llmtune finetune` with `task: classification`: a classification head on a model.

Reads top to bottom: read and check the rows and labels (`preflight`), load the model with its
head, apply the tuning method and tokenize (`setup`), build the HF Trainer (`trainer`), measure
the test split (`evaluate`), save a model that loads with plain transformers + peft and the
test predictions (`save`), and write the report (`report`). The shared training run
(`llmtune.runs.lifecycle.run_training`) calls these in order, with the lock, dry run, resume,
graceful stop and status around them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmtune.console import markdown_table, say, table
from llmtune.data.readers import Rows, Splits, check_labels, infer_labels, load_splits
from llmtune.data.templates import Template
from llmtune.errors import BadInput
from llmtune.metrics import classification_metrics, confusion_markdown
from llmtune.models.loading import LoadedModel, load_model
from llmtune.models.methods import apply_method
from llmtune.recipes.finetune import FinetuneRecipe
from llmtune.runs.lifecycle import (
    Metrics,
    Outcome,
    Plan,
    count_parameters,
    run_training,
    warnings_markdown,
)
from llmtune.runs.options import JobOptions
from llmtune.runs.rundir import RunDir
from llmtune.runs.training import (
    callbacks,
    planned_steps,
    preflight,
    resolve_precision,
    resolve_training,
    training_arguments,
)

HEADLINE = ("accuracy", "precision", "recall", "f1")


def run(recipe: FinetuneRecipe, options: JobOptions) -> dict[str, Any]:
    """Train a classification head from a validated recipe; returns the summary (for --json)."""
    return run_training(ClassificationJob(recipe), options)


class ClassificationJob:
    """The classification steps the shared training run calls, in order."""

    def __init__(self, recipe: FinetuneRecipe) -> None:
        self.recipe = recipe
        self.template = (
            Template(recipe.data.template, where="data.template") if recipe.data.template else None
        )

    def preflight(self) -> list[Path]:
        self.splits, self.labels = read_data(self.recipe, self.template)
        self.device = preflight(self.recipe.model, self.recipe.method.type, self.recipe.training)
        return self.splits.files

    def setup(self, run_dir: Path, dry_run: bool = False) -> Plan:
        recipe = self.recipe
        self.loaded = load_model(
            recipe.model,
            recipe,
            head="classification",
            labels=self.labels,
            corpus=(r["text"] for r in self.splits.train.rows if "text" in r),
            for_training=True,
            method=recipe.method.type,
            empty_weights=dry_run,  # a dry run only counts parameters: no weights read
        )
        if recipe.method.type == "prompt":
            # the soft prompt is prepended as embeddings, so the head cannot find the last real
            # token past right padding: pad on the left instead
            self.loaded.tokenizer.padding_side = "left"
        from llmtune.models.export import snapshot_base

        self.base = snapshot_base(self.loaded.model, recipe)
        self.model = apply_method(self.loaded.model, recipe.method, "classification", self.loaded.tokenizer)
        self.encoded = {
            name: encode(getattr(self.splits, name), self.template, self.loaded, self.labels, recipe)
            for name in ("train", "validation", "test")
        }
        trainable, total = count_parameters(self.model)
        self.training = resolve_training(
            recipe.training, recipe.method.type, recipe.task, len(self.splits.train)
        )
        return Plan(
            run_dir=run_dir,
            task=recipe.task,
            method=recipe.method.type,
            model=recipe.model.describe(),
            rows=self.splits.counts(),
            skipped_rows=self.splits.skipped(),
            trainable_params=trainable,
            total_params=total,
            planned_steps=planned_steps(self.training, len(self.splits.train)),
            device=self.loaded.device,
            precision=resolve_precision(recipe.training, self.loaded.device),
            details={
                "labels": self.labels,
                "epochs": self.training.epochs,
                "learning_rate": self.training.learning_rate,
            },
        )

    def trainer(self, run_dir: RunDir) -> Any:
        from transformers import DataCollatorWithPadding, Trainer

        from llmtune.runs.callbacks import keep_stdout_clean

        has_validation = self.encoded["validation"] is not None
        trainer = Trainer(
            model=self.model,
            args=training_arguments(
                self.training,
                run_dir.path,
                device=self.loaded.device,
                seed=self.recipe.seed,
                has_validation=has_validation,
            ),
            train_dataset=self.encoded["train"],
            eval_dataset=self.encoded["validation"],
            data_collator=DataCollatorWithPadding(self.loaded.tokenizer),
            compute_metrics=eval_metrics(self.labels),
            callbacks=callbacks(self.training, run_dir, has_validation),
        )
        keep_stdout_clean(trainer)
        return trainer

    def evaluate(self, trainer: Any) -> Metrics | None:
        if self.encoded["test"] is None:
            return None
        metrics, self.probabilities = predict(trainer, self.encoded["test"], self.labels)
        return metrics

    def save(self, trainer: Any, run_dir: RunDir) -> None:
        from llmtune.models.export import save_trained_model

        self.validation_predicted = None
        if self.encoded["validation"] is not None:
            self.validation_predicted = predict(trainer, self.encoded["validation"], self.labels)[0][
                "predicted_labels"
            ]
        if self.encoded["test"] is not None:
            write_predictions(run_dir, self.splits.test, self.template, self.probabilities, self.labels)
        save_trained_model(
            trainer.model,
            self.loaded,
            run_dir.path / "model",
            self.recipe,
            labels=self.labels,
            merge=self.recipe.export.merge_adapter,
            base=self.base,
        )

    def report(self, run_dir: RunDir, outcome: Outcome) -> None:
        from llmtune.runs.plots import training_curves

        if outcome.test is not None:
            table("test metrics (macro)", ["metric", "before training", "after training"], _rows(outcome))
        run_dir.write_text("report.md", _report(self.recipe, outcome) + training_curves(run_dir.path))

    def headline(self, metrics: Metrics | None) -> dict[str, Any] | None:
        if metrics is None:
            return None
        return {**{k: round(metrics[k], 4) for k in HEADLINE}, "accuracy_ci95": metrics["accuracy_ci95"]}

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


def encode(
    rows: Rows, template: Template | None, loaded: LoadedModel, labels: list[str], recipe: FinetuneRecipe
) -> Any:
    """A datasets.Dataset of input_ids / attention_mask / labels for one split (None when empty)."""
    import datasets

    if not rows.rows:
        return None
    texts = [model_input(r, template, w) for r, w in zip(rows.rows, rows.where)]
    enc = loaded.tokenizer(texts, truncation=True, max_length=recipe.data.max_length)
    index = {name: i for i, name in enumerate(labels)}
    return datasets.Dataset.from_dict(
        {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": [index[str(r["label"])] for r in rows.rows],
        }
    )


def model_input(row: dict[str, Any], template: Template | None, where: str | None = None) -> str:
    """The text the model sees for a row: the template's output, else the text field."""
    return template.render(row, where=where) if template else str(row["text"])


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

    out = trainer.predict(dataset, metric_key_prefix="test")
    logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
    gold = [labels[i] for i in out.label_ids]
    metrics = classification_metrics(gold, [labels[i] for i in logits.argmax(-1)], labels)
    return metrics, torch.softmax(torch.as_tensor(logits).float(), dim=-1).tolist()


def write_predictions(
    run_dir: RunDir,
    rows: Rows,
    template: Template | None,
    probabilities: list[list[float]],
    labels: list[str],
) -> None:
    """predictions.jsonl: each test row's id (its id column, else file:line), the input as the
    model saw it, gold label, prediction and probabilities, to see which rows the model gets wrong."""
    lines = []
    for row, where, probs in zip(rows.rows, rows.where, probabilities, strict=True):
        best = max(range(len(labels)), key=lambda j: probs[j])
        record = {
            "id": row["id"] if row.get("id") is not None else where,
            "text": model_input(row, template, where),
            "gold": str(row["label"]),
            "prediction": labels[best],
            "scores": dict(zip(labels, probs, strict=True)),
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    run_dir.write_text("predictions.jsonl", "".join(lines))


def _rows(outcome: Outcome) -> list[list[Any]]:
    before, after = outcome.test_before, outcome.test
    assert after is not None
    rows = [[m, before[m] if before else "-", after[m]] for m in HEADLINE]
    interval = [(m or {}).get("accuracy_ci95") for m in (before, after)]
    rows.insert(1, ["accuracy 95% CI", *(f"[{i[0]:.3f}, {i[1]:.3f}]" if i else "-" for i in interval)])
    return rows


def _report(recipe: FinetuneRecipe, outcome: Outcome) -> str:
    plan = outcome.plan
    lines = [
        f"# {recipe.name}: finetune ({recipe.task}, {recipe.method.type})",
        "",
        f"- model: `{plan.model}`",
        f"- trainable parameters: {plan.trainable_params:,} of {plan.total_params:,} "
        f"({100 * plan.trainable_share:.2f}%)",
        f"- rows: {plan.rows}",
        f"- steps: {outcome.steps}, training time: {outcome.train_seconds:.2f} s on {plan.device}",
        "",
        *warnings_markdown(outcome),
    ]
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
        ]
    return "\n".join(lines)
