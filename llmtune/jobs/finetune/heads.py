"""What the two head tasks of `llmtune finetune` share: classification (N labels) and regression
(one output) both read rows with a `label`, load the model with a sequence-classification head,
apply the tuning method, encode, train with the HF Trainer, write predictions.jsonl and open
report.md the same way. Only the label's meaning, the metrics and the report's body differ;
`classification.py` and `regression.py` supply those.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.console import say
from llmtune.data.readers import Row, Rows, Splits
from llmtune.data.splits import load_splits
from llmtune.data.templates import Template
from llmtune.models.loading import LoadedModel, load_model
from llmtune.models.methods import apply_method
from llmtune.recipes.common import Training
from llmtune.recipes.finetune import FinetuneRecipe
from llmtune.runs.job import Metrics, Outcome, Plan, count_parameters, training_plan, warnings_markdown
from llmtune.runs.rundir import RunDir
from llmtune.runs.training import (
    callbacks,
    resolve_training,
    training_arguments,
)
from llmtune.slices import check_slice_columns, slice_metrics, slices_markdown

SPLITS = ("train", "validation", "test")


def read_rows(recipe: FinetuneRecipe, template: Template | None) -> Splits:
    """train / validation / test rows that have a label (and a text, or the template's fields)."""
    required = ("label",) if template else ("text", "label")
    splits = load_splits(
        recipe, recipe.data, required=required, label_field="label", retain=recipe.evaluation.retain
    )
    if template is not None:
        template.check_fields(set(splits.train.rows[0]), file=splits.train.where[0].rsplit(":", 1)[0])
    if not splits.test.rows:
        say("no test split (data.test or data.split.test): only training metrics will be reported")
        if recipe.evaluation.slices:
            say("evaluation.slices: no test split, so no slice is measured")
    else:  # slices are measured on the test rows: each needs its value now, before any training
        check_slice_columns(splits.test.rows, splits.test.where, recipe.evaluation.slices)
    return splits


def with_slices(
    recipe: FinetuneRecipe, rows: Rows, metrics: Metrics, compute: Callable[[list[int]], Metrics]
) -> Metrics:
    """`metrics` with "slices" added when evaluation.slices names columns: `compute(indices)` is
    the task's own metric function on those test rows, so a slice's numbers are what the whole
    split's would be on its rows alone."""
    if recipe.evaluation.slices:
        metrics["slices"] = slice_metrics(rows.rows, recipe.evaluation.slices, compute)
    return metrics


def slices_section(metrics: Metrics | None) -> list[str]:
    """report.md's per-slice tables (after training), when slices were measured."""
    if not metrics or not metrics.get("slices"):
        return []
    return ["", slices_markdown(metrics["slices"])]


def model_input(row: Row, template: Template | None, where: str | None = None) -> str:
    """The text the model sees for a row: the template's output, else the text field."""
    return template.render(row, where=where) if template else str(row["text"])


@dataclass
class Prepared:
    """A head model ready to train: the loaded model, its base before the method wrapped it (a
    scratch model's only copy), the wrapped model, the encoded splits and the resolved training."""

    loaded: LoadedModel
    base: Any
    model: Any
    encoded: dict[str, Any]
    training: Training


def prepare(
    recipe: FinetuneRecipe,
    splits: Splits,
    template: Template | None,
    *,
    labels: list[str],
    target: Callable[[Row], float | int],
    dry_run: bool,
    problem_type: str | None = None,
) -> Prepared:
    """Load the model with a head of len(labels) outputs, apply the tuning method and encode
    every split (`target` turns a row's label into what the head learns)."""
    from llmtune.models.export import snapshot_base

    loaded = load_model(
        recipe.model,
        recipe,
        head="classification",
        labels=labels,
        corpus=(r["text"] for r in splits.train.rows if "text" in r),
        for_training=True,
        method=recipe.method.type,
        empty_weights=dry_run,  # a dry run only counts parameters: no weights read
    )
    if problem_type is not None:  # saved in config.json: the head's meaning travels with the model
        loaded.model.config.problem_type = problem_type
    if recipe.method.type == "prompt":
        # the soft prompt is prepended as embeddings, so the head cannot find the last real
        # token past right padding: pad on the left instead
        loaded.tokenizer.padding_side = "left"
    base = snapshot_base(loaded.model, recipe)
    model = apply_method(loaded.model, recipe.method, "classification", loaded.tokenizer)
    encoded = {
        name: encode(getattr(splits, name), template, loaded, recipe.data.max_length, target)
        for name in SPLITS
    }
    training = resolve_training(recipe.training, recipe.method.type, recipe.task, len(splits.train))
    return Prepared(loaded, base, model, encoded, training)


def plan(
    run_dir: Path, recipe: FinetuneRecipe, splits: Splits, prepared: Prepared, details: dict[str, Any]
) -> Plan:
    """The plan of a head fine-tune: the task's own `details`, then the data's sources (when
    mixed), the epochs and the learning rate."""
    training = prepared.training
    return training_plan(
        run_dir,
        task=recipe.task,
        method=recipe.method.type,
        model=recipe.model.describe(),
        rows=splits.counts(),
        skipped_rows=splits.skipped(),
        parameters=count_parameters(prepared.model),
        training=training,
        training_rows=len(splits.train),
        device=prepared.loaded.device,
        details={
            **details,
            **({"sources": splits.sources} if splits.sources else {}),
            "epochs": training.epochs,
            "learning_rate": training.learning_rate,
        },
    )


def encode(
    rows: Rows,
    template: Template | None,
    loaded: LoadedModel,
    max_length: int,
    target: Callable[[Row], float | int],
) -> Any:
    """A datasets.Dataset of input_ids / attention_mask / labels for one split (None when empty)."""
    import datasets

    if not rows.rows:
        return None
    texts = [model_input(r, template, w) for r, w in zip(rows.rows, rows.where)]
    enc = loaded.tokenizer(texts, truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict(
        {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": [target(r) for r in rows.rows],
        }
    )


def build_trainer(
    recipe: FinetuneRecipe,
    prepared: Prepared,
    run_dir: RunDir,
    compute_metrics: Callable[[Any], dict[str, float]],
    *,
    compute_loss: Callable[..., Any] | None = None,
    extra_args: dict[str, Any] | None = None,
) -> Any:
    """The HF Trainer over the encoded splits, with the lifecycle's callbacks."""
    from transformers import DataCollatorWithPadding, Trainer

    from llmtune.runs.callbacks import keep_stdout_clean

    validation = prepared.encoded["validation"]
    has_validation = validation is not None
    rows = len(validation) if has_validation else None
    trainer = Trainer(
        model=prepared.model,
        args=training_arguments(
            prepared.training,
            run_dir.path,
            device=prepared.loaded.device,
            seed=recipe.seed,
            has_validation=has_validation,
            validation_rows=rows,
            extra=extra_args,
        ),
        train_dataset=prepared.encoded["train"],
        eval_dataset=prepared.encoded["validation"],
        data_collator=DataCollatorWithPadding(prepared.loaded.tokenizer),
        compute_metrics=compute_metrics,
        compute_loss_func=compute_loss,
        callbacks=callbacks(prepared.training, run_dir, has_validation, rows),
    )
    # the heads' losses (the model's cross-entropy or MSE, our Huber) are means over the batch that
    # ignore the Trainer's item count; left to its guess (a forward taking **kwargs), the Trainer
    # would skip dividing them by grad_accum and take grad_accum-times larger steps
    trainer.loss_is_scaled_for_ga = False
    keep_stdout_clean(trainer)
    return trainer


def head_outputs(trainer: Any, dataset: Any) -> tuple[Any, Any]:
    """(outputs, label ids) of the trainer's current model on `dataset`, as numpy arrays."""
    out = trainer.predict(dataset, metric_key_prefix="test")
    outputs = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
    return outputs, out.label_ids


def save_model(
    trainer: Any, prepared: Prepared, run_dir: RunDir, recipe: FinetuneRecipe, labels: list[str]
) -> None:
    """model/: loadable with plain transformers + peft, the head's label names in its config."""
    from llmtune.models.export import save_trained_model

    save_trained_model(
        trainer.model,
        prepared.loaded,
        run_dir.path / "model",
        recipe,
        labels=labels,
        merge=recipe.export.merge_adapter,
        base=prepared.base,
    )


def write_predictions(
    run_dir: RunDir, rows: Rows, template: Template | None, results: list[dict[str, Any]]
) -> None:
    """predictions.jsonl: each test row's id (its id column, else file:line), the input as the
    model saw it, then `results` (gold, prediction...), to see which rows the model gets wrong."""
    lines = []
    for row, where, result in zip(rows.rows, rows.where, results, strict=True):
        record = {
            "id": row["id"] if row.get("id") is not None else run_dir.recipe.as_written(where),
            "text": model_input(row, template, where),
            **result,
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    run_dir.write_text("predictions.jsonl", "".join(lines))


def report_header(recipe: FinetuneRecipe, outcome: Outcome) -> list[str]:
    """The top of report.md: the run's model, parameters, rows, steps, and its warnings."""
    plan = outcome.plan
    return [
        f"# {recipe.name}: finetune ({recipe.task}, {recipe.method.type})",
        "",
        f"- model: `{plan.model}`",
        f"- trainable parameters: {plan.trainable_params:,} of {plan.total_params:,} "
        f"({100 * plan.trainable_share:.2f}%)",
        f"- rows: {plan.rows_text()}",
        f"- steps: {outcome.steps}, training time: {outcome.train_seconds:.2f} s on {plan.device}",
        "",
        *warnings_markdown(outcome),
    ]


def before_after(names: list[str] | tuple[str, ...], outcome: Outcome) -> list[list[Any]]:
    """Rows of a metric / before training / after training table."""
    before, after = outcome.test_before, outcome.test
    assert after is not None
    return [[m, _shown(before.get(m)) if before else "-", _shown(after.get(m))] for m in names]


def _shown(value: Any) -> Any:
    return "-" if value is None else value


def rounded(metrics: Metrics, names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The summary's metrics: the named ones to 4 decimals (None stays None: a metric undefined
    on this split), and the slices when measured (the --fail-under gate reads them)."""
    out = {k: None if metrics.get(k) is None else round(metrics[k], 4) for k in names}
    if "slices" in metrics:
        out["slices"] = metrics["slices"]
    return out


def encode_retain(
    recipe: FinetuneRecipe,
    splits: Splits,
    template: Template | None,
    prepared: Prepared,
    target: Callable[[Row], float | int],
) -> Any:
    """evaluation.retain's general rows encoded like the test split (None without them); done in
    setup, so that a retain row the head cannot score is refused before training."""
    return encode(splits.retain, template, prepared.loaded, recipe.data.max_length, target)


def retain_metrics(trainer: Any, dataset: Any) -> Metrics | None:
    """The lifecycle's optional `retain` step for a head task: loss and the task's metrics."""
    from llmtune.jobs.finetune.retain import measure

    return None if dataset is None else measure(trainer, dataset, perplexity=False)


def source_losses(trainer: Any, splits: Splits, prepared: Prepared) -> dict[str, Metrics] | None:
    """The lifecycle's optional `sources` step for a head task: per source of a mixture, its rows
    and the final model's loss on its held-out rows."""
    from llmtune.jobs.finetune.retain import measured_split, source_metrics

    split = measured_split(splits)
    rows = getattr(splits, split).rows
    return source_metrics(trainer, splits, split, prepared.encoded[split], rows, perplexity=False)
