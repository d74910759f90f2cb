"""What the three distill tasks share, as functions each job's steps call (the way
`jobs/finetune/heads.py` serves finetune): the text a row shows the models, loading the teacher,
building the student (teacher blocks, a path or a scratch model; vocabulary trimmed if asked),
refusing a student that is not smaller, the plan's teacher details, the training arguments and test predictions of
the two head tasks (classification, regression), the speed measurement, predictions.jsonl and the
"quality kept" warning. Each job still reads top to bottom in its own file; only the label's
meaning, the loss, the metrics and the report differ.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llmtune.jobs.distill.compare as compare
from llmtune.data.readers import Row, Splits
from llmtune.data.templates import Template
from llmtune.errors import BadInput
from llmtune.jobs.distill.checks import SPLITS, rows_of
from llmtune.models.info import Head
from llmtune.models.loading import LoadedModel, load_model
from llmtune.recipes.common import Training
from llmtune.recipes.distill import DistillRecipe
from llmtune.runs.job import Plan, count_parameters, training_plan
from llmtune.runs.rundir import RunDir
from llmtune.runs.training import training_arguments

Render = Callable[[Row, str | None], str]
SMALLER_HINT = "keep fewer blocks, a smaller path or scratch model, or trim_vocab"


def render(row: Row, template: Template | None, where: str | None = None, field: str = "text") -> str:
    """The text teacher and student see for a row: the template's output, else its `field`."""
    return template.render(row, where=where) if template else str(row[field])


def inputs_of(splits: Splits, model_input: Render) -> dict[str, list[str]]:
    """Every split's model inputs, in row order."""
    return {name: [model_input(r, w) for r, w in rows_of(splits, name)] for name in SPLITS}


# ---------------------------------------------------------------------------- the two models
def load_teacher(
    recipe: DistillRecipe, head: Head, labels: list[str] | None = None, dry_run: bool = False
) -> LoadedModel:
    """The teacher with its trained head (on a dry run without its weights)."""
    return load_model(recipe.teacher, recipe, head=head, key="teacher", labels=labels, empty_weights=dry_run)


def new_student(
    recipe: DistillRecipe,
    teacher: LoadedModel,
    head: Head,
    corpus: Iterable[str],
    labels: list[str] | None = None,
    dry_run: bool = False,
) -> LoadedModel:
    """The student, untrained: the teacher's blocks that student.from_teacher keeps (with the
    teacher's tokenizer and device), else the path or scratch model with a `head` for `labels`
    (`corpus`: the texts a scratch tokenizer learns from)."""
    from llmtune.models.students import keep_blocks

    spec = recipe.student
    if spec.from_teacher is not None:
        model = keep_blocks(teacher.model, spec.from_teacher.layers)
        return LoadedModel(model, teacher.tokenizer, spec.describe(), teacher.device)
    return load_model(
        spec,
        recipe,
        head=head,
        key="student",
        labels=labels,
        corpus=corpus,
        for_training=True,
        method="full",
        empty_weights=dry_run,
    )


def trim_student(recipe: DistillRecipe, student: LoadedModel, splits: Splits, model_input: Render) -> None:
    """With student.trim_vocab, keep only the vocabulary the inputs of every split use."""
    if not recipe.student.trims_vocab:
        return
    from llmtune.models.students import trim_vocabulary

    texts = [t for split in inputs_of(splits, model_input).values() for t in split]
    student.model, student.tokenizer = trim_vocabulary(
        student.model, student.tokenizer, texts, recipe.data.max_length
    )


@dataclass
class Sizes:
    """Parameter counts of teacher and student (and the student's trainable ones)."""

    teacher_params: int
    student_params: int
    trainable: int

    def as_dict(self) -> dict[str, int]:
        """The counts the side-by-side comparison shows."""
        return {"teacher_params": self.teacher_params, "student_params": self.student_params}

    def plan_details(self, teacher: str) -> dict[str, Any]:
        """The plan's first details: the teacher (`teacher`: its description), its size and the
        student's share of it."""
        return {
            "teacher": teacher,
            "teacher_params": self.teacher_params,
            "size_ratio": round(self.student_params / self.teacher_params, 4),
        }


def check_smaller(
    recipe: DistillRecipe, teacher: LoadedModel, student: LoadedModel, hint: str = SMALLER_HINT
) -> Sizes:
    """Both models' sizes; a student as big as its teacher is refused (`hint`: how to shrink it)."""
    teacher_params = count_parameters(teacher.model)[1]
    trainable, total = count_parameters(student.model)
    if total >= teacher_params:
        raise BadInput(
            f"the student has {total:,} parameters and the teacher {teacher_params:,}: a student must "
            f"be smaller ({hint})",
            file=str(recipe.source) if recipe.source else None,
            key="student",
        )
    return Sizes(teacher_params, total, trainable)


def distill_plan(
    run_dir: Path,
    recipe: DistillRecipe,
    task: str,
    splits: Splits,
    sizes: Sizes,
    training: Training,
    student: LoadedModel,
    details: dict[str, Any],
) -> Plan:
    """The plan of a distill run of `task`: the student trained on `splits` with the resolved
    `training`; the teacher and its size lead the plan's details, the job's own `details` follow."""
    return training_plan(
        run_dir,
        task=task,
        method=f"distill ({recipe.strategy})",
        model=recipe.student.describe(),
        rows=splits.counts(),
        skipped_rows=splits.skipped(),
        parameters=(sizes.trainable, sizes.student_params),
        training=training,
        training_rows=len(splits.train),
        device=student.device,
        details={**sizes.plan_details(recipe.teacher.describe()), **details},
    )


# -------------------------------------------------------- the head tasks' trainer and outputs
def token_dataset(student: LoadedModel, texts: list[str], max_length: int, columns: dict[str, list]) -> Any:
    """A datasets.Dataset of the student's tokens of `texts` beside the task's `columns`."""
    import datasets

    enc = student.tokenizer(texts, truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], **columns}
    )


def head_arguments(
    training: Training,
    folder: Path,
    student: LoadedModel,
    seed: int,
    has_validation: bool,
    save: bool = True,
    validation_rows: int | None = None,
) -> Any:
    """TrainingArguments of the classification and regression trainers: batches keep their
    teacher and gold columns (the loss reads them) and `gold` is the label; `save=False` for a
    baseline, which writes no checkpoints; a validation split under the rule chooses nothing
    (`runs.training.selects_checkpoint`)."""
    extra: dict[str, Any] = {"remove_unused_columns": False, "label_names": ["gold"]}
    if not save:
        extra["save_strategy"] = "no"
    return training_arguments(
        training,
        folder,
        device=student.device,
        seed=seed,
        has_validation=has_validation,
        validation_rows=validation_rows,
        extra=extra,
    )


def test_outputs(trainer: Any, dataset: Any) -> Any:
    """The trainer's model's raw outputs (logits or scores) on the test split's dataset."""
    outputs = trainer.predict(dataset, metric_key_prefix="test").predictions
    return outputs[0] if isinstance(outputs, tuple) else outputs


def trained_student(trainer: Any, student: LoadedModel) -> LoadedModel:
    """The trainer's model with the student's tokenizer and device, ready to measure."""
    return LoadedModel(trainer.model, student.tokenizer, "", student.device)


def head_speed(
    recipe: DistillRecipe, teacher: LoadedModel, student: LoadedModel, texts: list[str]
) -> dict[str, dict[str, Any]]:
    """Teacher and student timed on the same test inputs (`compare.measure_speed`)."""
    models = {"teacher": teacher, "student": student}
    return compare.measure_speed(models, texts, recipe.measure_batch_size, recipe.data.max_length)


def row_id(row: Row, where: str) -> Any:
    """A row's id: its id field, else where it was read (file:line)."""
    return row["id"] if row.get("id") is not None else where


def write_predictions(run_dir: RunDir, records: Iterable[dict[str, Any]]) -> None:
    """predictions.jsonl: one record per test row."""
    shown = ({**r, "id": run_dir.recipe.as_written(r.get("id"))} if "id" in r else r for r in records)
    lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in shown]
    run_dir.write_text("predictions.jsonl", "".join(lines))


def kept_warning(comparison: dict[str, Any], measure: str) -> list[str]:
    """A warning when the student keeps less than 90% of the teacher's `measure`."""
    kept = comparison.get("quality_kept")
    if kept is not None and kept < 0.9:
        return [
            f"the student keeps only {100 * kept:.1f}% of the teacher's {measure}: train longer, "
            "keep more blocks, or add transfer rows"
        ]
    return []
