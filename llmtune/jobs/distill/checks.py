"""What distill checks before any training: the rows (transfer rows may lack labels, test rows
may not), the label set of teacher, student and data. Each problem is BadInput (exit 2)."""

from __future__ import annotations

from typing import Any

from llmtune.data.numeric import numeric_label
from llmtune.data.readers import Rows, Splits, refuse
from llmtune.data.splits import load_splits
from llmtune.data.templates import Template
from llmtune.errors import BadInput, Problem
from llmtune.models.loading import inspect_model
from llmtune.recipes.distill import DistillRecipe

SPLITS = ("train", "validation", "test")


def read_splits(
    recipe: DistillRecipe, template: Template | None, field: str, label_field: str | None, test_rows: str
) -> Splits:
    """Transfer, validation and test rows of any task (with a `field`, or the template's fields);
    refused without the `test_rows` that teacher and student are compared on."""
    splits = load_splits(recipe, recipe.data, required=() if template else (field,), label_field=label_field)
    if template is not None:
        template.check_fields(set(splits.train.rows[0]), file=splits.train.where[0].rsplit(":", 1)[0])
    if not splits.test.rows:
        raise BadInput(
            f"distill compares teacher and student on {test_rows}: give data.test (or data.split: {{test: 0.1}})",
            file=str(recipe.source) if recipe.source else None,
            key="data.test",
        )
    return splits


def read_rows(recipe: DistillRecipe, template: Template | None) -> Splits:
    """Transfer rows (labels optional), validation rows, and labelled test rows."""
    splits = read_splits(recipe, template, "text", "label", "labelled test rows")
    unlabelled = [
        Problem("test row has no label", file=w) for r, w in rows_of(splits, "test") if not has_gold(r)
    ]
    if unlabelled:
        refuse(unlabelled, "every test row needs its gold label (data.columns: {label: COLUMN})")
    return splits


def resolve_labels(recipe: DistillRecipe) -> list[str]:
    """The recipe's labels, else the teacher head's names; they must be the teacher's."""
    info = inspect_model(recipe.teacher, recipe, "teacher")
    if info.regression:
        raise BadInput(
            "the teacher is a regression model (one output that predicts a number): distill it with "
            "task: regression, strategy: scores",
            key="task",
        )
    if info.head != "classification" and recipe.teacher.scratch is None:
        raise BadInput(
            f"the teacher is not a classifier (architectures {info.architectures}); train one first, "
            "e.g. with llmtune finetune (task: classification)",
            key="teacher.path",
        )
    names = info.head_labels
    if names is None:
        if recipe.labels is None:
            raise BadInput("the teacher's head has no label names: list them in labels:", key="labels")
        return list(recipe.labels)
    if recipe.labels is not None and set(names) != set(recipe.labels):
        raise BadInput(f"labels {recipe.labels} differ from the teacher's labels {names}", key="labels")
    return names  # in the head's order, so that loading never reorders a trained head


def check_student_labels(recipe: DistillRecipe, labels: list[str]) -> None:
    """A student given by path whose trained head predicts other labels is refused."""
    if recipe.student.path is None:
        return
    info = inspect_model(recipe.student, recipe, "student")
    if info.regression:
        raise BadInput(
            "the student is a regression model (one output) and the teacher a classifier: a student "
            "predicts what its teacher predicts; give a classifier or a base model",
            key="student.path",
        )
    if info.head != "classification" or info.head_labels is None:
        return  # a base model (a new head) or an unnamed head: it learns the teacher's labels
    if info.head_labels != labels:
        raise BadInput(
            f"the student's labels {info.head_labels} differ from the teacher's {labels} (names and "
            "order): a student learns the teacher's label set",
            key="student.path",
        )


def check_gold(splits: Splits, labels: list[str]) -> None:
    """Gold labels that rows do have must be among `labels` (every bad one reported at once)."""
    bad = [
        Problem(f"label {r['label']!r} is not one of the teacher's labels {labels}", file=w)
        for name in SPLITS
        for r, w in rows_of(splits, name)
        if has_gold(r) and str(r["label"]) not in labels
    ]
    if bad:
        refuse(bad, f"{len(bad)} row(s) with a label the teacher does not predict")


def has_gold(row: dict[str, Any]) -> bool:
    return row.get("label") not in (None, "")


def rows_of(splits: Splits, name: str) -> list[tuple[dict[str, Any], str]]:
    rows: Rows = getattr(splits, name)
    return list(zip(rows.rows, rows.where))


def gold_of(rows: Rows) -> list[str]:
    return [str(r["label"]) for r in rows.rows]


def gold_indices(rows: Rows) -> list[int]:
    """The rows that have a gold label or score (a baseline trains on these)."""
    return [i for i, r in enumerate(rows.rows) if has_gold(r)]


# ---------------------------------------------------------------- regression (strategy: scores)
def check_regression_models(recipe: DistillRecipe) -> tuple[float, float] | None:
    """Teacher and student of `task: regression` must both predict one number: a classifier on
    either side is refused. Returns the teacher's label_range (its head predicts 0..1 of it)."""
    teacher = inspect_model(recipe.teacher, recipe, "teacher")
    if recipe.teacher.scratch is None and not teacher.regression:
        what = (
            f"a classifier with labels {teacher.head_labels}"
            if teacher.head == "classification"
            else (f"not a regression model (architectures {teacher.architectures})")
        )
        raise BadInput(
            f"the teacher is {what}; task: regression needs a regression teacher (one output, as "
            "llmtune finetune task: regression trains), or use task: classification",
            key="teacher.path",
        )
    if recipe.student.path is not None:
        student = inspect_model(recipe.student, recipe, "student")
        if student.head == "classification" and not student.regression:
            raise BadInput(
                f"the student is a classifier with labels {student.head_labels} and the teacher a "
                "regression model: give a regression student or a base model (a new one-output head)",
                key="student.path",
            )
    return teacher.label_range


def check_scores(splits: Splits) -> None:
    """Gold scores that rows do have must be numbers (every bad one reported at once)."""
    bad = []
    for name in SPLITS:
        for row, where in rows_of(splits, name):
            if has_gold(row):
                try:
                    numeric_label(row)
                except ValueError as exc:
                    bad.append(Problem(f"gold score: {exc}", file=where, key="label"))
    if bad:
        refuse(bad, f"{len(bad)} row(s) whose gold score is not a number")
