"""`llmtune distill` with `task: classification`: a smaller student learns the teacher's labels.

Reads top to bottom, as steps of the shared training run (`runs.lifecycle.run_training`):
read the transfer, validation and test rows (`preflight`); load the teacher, build the student
(teacher blocks, a path or a scratch model; vocabulary trimmed if asked) and refuse one that is
not smaller or predicts other labels (`setup`); the teacher labels every row into the run
directory's journal, then the HF Trainer with the distillation loss (`trainer`); test metrics
(`evaluate`); save the student, its predictions, the gold-only baseline and the side-by-side
measurements (`save`); the report (`report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llmtune.inference.registry as registry
import llmtune.jobs.distill.common as common
import llmtune.jobs.distill.compare as compare
from llmtune.data.templates import template_of
from llmtune.jobs.distill.checks import (
    check_gold,
    check_student_labels,
    gold_indices,
    gold_of,
    has_gold,
    read_rows,
    resolve_labels,
    rows_of,
)
from llmtune.jobs.distill.labelling import (
    JOURNAL,
    TeacherLabels,
    journal_stamp,
    label_rows,
    teacher_engine,
)
from llmtune.jobs.distill.losses import NO_GOLD, Collator, DistillationTrainer
from llmtune.metrics import classification_metrics
from llmtune.models.loading import LoadedModel
from llmtune.recipes.distill import DistillRecipe
from llmtune.runs.job import Metrics, Outcome, Plan, TrainingJob
from llmtune.runs.rundir import RunDir
from llmtune.runs.training import callbacks, preflight, resolve_training

HEADLINE = ("accuracy", "precision", "recall", "f1")


class ClassificationDistill(TrainingJob):
    """The steps the shared training run calls, in order."""

    def __init__(self, recipe: DistillRecipe) -> None:
        self.recipe = recipe
        self.template = template_of(recipe.data.template)
        self.comparison: dict[str, Any] = {}

    # ------------------------------------------------------------------ preflight
    def preflight(self) -> list[Path]:
        if (
            self.recipe.engine == "onnx"
        ):  # the teacher labels on ONNX Runtime: refuse early where it is missing
            registry.require("onnx")
        self.splits = read_rows(self.recipe, self.template)
        self.device = preflight(self.recipe.student, "full", self.recipe.training)
        return self.splits.files

    # ---------------------------------------------------------------------- setup
    def setup(self, run_dir: Path, dry_run: bool = False) -> Plan:
        recipe = self.recipe
        self.labels = resolve_labels(recipe)
        check_gold(self.splits, self.labels)
        self.teacher = common.load_teacher(recipe, "classification", self.labels, dry_run)
        self.student = self.build_student(dry_run)
        sizes = common.check_smaller(recipe, self.teacher, self.student)
        self.texts = common.inputs_of(self.splits, self.model_input)
        self.training = resolve_training(recipe.training, "full", "classification", len(self.splits.train))
        self.comparison = sizes.as_dict()
        details = {
            "labels": self.labels,
            "strategy": recipe.strategy,
            "temperature": recipe.temperature,
            "alpha": recipe.alpha,
            "gold_rows": len(self.gold_indices()),
        }
        return common.distill_plan(
            run_dir, recipe, "classification", self.splits, sizes, self.training, self.student, details
        )

    def build_student(self, dry_run: bool = False) -> LoadedModel:
        """The student, untrained: teacher blocks, a path or a scratch model; trimmed if asked."""
        check_student_labels(self.recipe, self.labels)
        corpus = (self.model_input(r, w) for r, w in rows_of(self.splits, "train"))
        student = common.new_student(
            self.recipe, self.teacher, "classification", corpus, labels=self.labels, dry_run=dry_run
        )
        common.trim_student(self.recipe, student, self.splits, self.model_input)
        return student

    def gold_indices(self) -> list[int]:
        """Transfer rows that have a gold label (the baseline trains on these)."""
        return gold_indices(self.splits.train)

    def model_input(self, row: dict[str, Any], where: str | None = None) -> str:
        """The text teacher and student see for a row: the template's output, else its text."""
        return common.render(row, self.template, where)

    # -------------------------------------------------------------------- trainer
    def trainer(self, run_dir: RunDir) -> Any:
        from llmtune.runs.callbacks import keep_stdout_clean

        recipe = self.recipe
        engine = teacher_engine(recipe, self.teacher, labels=self.labels)
        stamp = journal_stamp(recipe, self.labels)
        prompts = [t for texts in self.texts.values() for t in texts]
        self.teacher_labels = label_rows(engine, prompts, self.labels, run_dir.path / JOURNAL, stamp)
        self.encoded = {name: self.encode(name, self.student, self.teacher_labels) for name in self.texts}
        has_validation = self.encoded["validation"] is not None
        rows = len(self.encoded["validation"]) if has_validation else None
        trainer = DistillationTrainer(
            model=self.student.model,
            args=common.head_arguments(
                self.training, run_dir.path, self.student, recipe.seed, has_validation, validation_rows=rows
            ),
            train_dataset=self.encoded["train"],
            eval_dataset=self.encoded["validation"],
            data_collator=Collator(self.student.tokenizer),
            compute_metrics=gold_metrics(self.labels),
            callbacks=callbacks(self.training, run_dir, has_validation, rows),
            temperature=recipe.temperature,
            alpha=recipe.alpha,
            hard=recipe.strategy == "hard_labels",
        )
        keep_stdout_clean(trainer)
        return trainer

    def encode(self, name: str, student: LoadedModel, teacher: TeacherLabels | None) -> Any:
        """A datasets.Dataset for one split: tokens, the teacher's probabilities, the gold index."""
        rows = getattr(self.splits, name).rows
        if not rows:
            return None
        texts = self.texts[name]
        index = {label: i for i, label in enumerate(self.labels)}
        columns = {"gold": [index[str(r["label"])] if has_gold(r) else NO_GOLD for r in rows]}
        if teacher is not None:
            columns["teacher"] = [teacher.of(t) for t in texts]
        return common.token_dataset(student, texts, self.recipe.data.max_length, columns)

    # ------------------------------------------------------------------- evaluate
    def evaluate(self, trainer: Any) -> Metrics | None:
        logits = common.test_outputs(trainer, self.encoded["test"])
        self.probabilities = softmax(logits)
        predicted = [self.labels[int(i)] for i in logits.argmax(-1)]
        metrics = classification_metrics(gold_of(self.splits.test), predicted, self.labels)
        teacher = self.teacher_predictions()
        metrics["teacher_agreement"] = sum(a == b for a, b in zip(predicted, teacher)) / len(teacher)
        self.student_test = metrics  # the last call is the trained student's
        return metrics

    def teacher_predictions(self) -> list[str]:
        """The teacher's label for each test row, from its probabilities in the journal."""
        return [self.labels[argmax(self.teacher_labels.of(t))] for t in self.texts["test"]]

    # ----------------------------------------------------------------------- save
    def save(self, trainer: Any, run_dir: RunDir) -> None:
        from llmtune.models.export import save_trained_model

        folder = save_trained_model(
            trainer.model, self.student, run_dir.path / "model", self.recipe, labels=self.labels
        )
        self.write_predictions(run_dir)
        gold = gold_of(self.splits.test)
        self.teacher_test = classification_metrics(gold, self.teacher_predictions(), self.labels)
        self.baseline = compare.train_baseline(self, run_dir) if self.recipe.baseline else None
        trained = common.trained_student(trainer, self.student)
        speed = common.head_speed(self.recipe, self.teacher, trained, self.texts["test"])
        sizes = self.comparison
        self.comparison = compare.side_by_side(
            self.recipe, sizes, self.teacher_test, self.student_test, self.baseline, speed, folder
        )
        self.comparison["teacher_rows_labelled"] = self.teacher_labels.labelled
        self.comparison["teacher_rows_reused"] = self.teacher_labels.reused

    def write_predictions(self, run_dir: RunDir) -> None:
        """predictions.jsonl: per test row the student's and the teacher's prediction and scores."""
        records = []
        for (row, where), text, probs in zip(
            rows_of(self.splits, "test"), self.texts["test"], self.probabilities
        ):
            teacher = self.teacher_labels.of(text)
            records.append(
                {
                    "id": common.row_id(row, where),
                    "text": text,
                    "gold": str(row["label"]),
                    "prediction": self.labels[argmax(probs)],
                    "scores": dict(zip(self.labels, probs)),
                    "teacher_prediction": self.labels[argmax(teacher)],
                    "teacher_scores": dict(zip(self.labels, teacher)),
                }
            )
        common.write_predictions(run_dir, records)

    # --------------------------------------------------------------------- report
    def report(self, run_dir: RunDir, outcome: Outcome) -> None:
        extra = {"teacher": self.teacher_test, "baseline": self.baseline}
        compare.report(self.recipe, run_dir, outcome, self.comparison, extra)

    def headline(self, metrics: Metrics | None) -> dict[str, Any] | None:
        if metrics is None:
            return None
        return {**{k: round(metrics[k], 4) for k in HEADLINE}, "accuracy_ci95": metrics["accuracy_ci95"]}

    def warnings(self, outcome: Outcome) -> list[str]:
        return common.kept_warning(self.comparison, "test accuracy")


# ------------------------------------------------------------------------- helpers
def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def softmax(logits: Any) -> list[list[float]]:
    import torch

    return torch.softmax(torch.as_tensor(logits).float(), dim=-1).tolist()


def gold_metrics(labels: list[str]) -> Any:
    """compute_metrics on validation: macro metrics on the rows that have a gold label."""

    def compute(prediction: Any) -> dict[str, float]:
        logits = (
            prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        )
        gold = prediction.label_ids
        keep = gold >= 0
        if not keep.any():
            return {}
        m = classification_metrics(
            [labels[i] for i in gold[keep]], [labels[i] for i in logits[keep].argmax(-1)], labels
        )
        return {k: m[k] for k in HEADLINE}

    return compute
