"""`llmtune distill` with `task: regression`, `strategy: scores`: a smaller student regresses the
teacher's score (a rating, a toxicity score), mixed by `alpha` with gold scores where rows have
them.

Reads like classification.py, as steps of the shared training run: read the rows and check gold
scores are numbers (`preflight`); load the regression teacher, refuse a classifier on either side,
build the smaller student with a one-output head (`setup`); the teacher scores every row through
the inference engine (`Engine.score`) into the run directory's journal, then the HF Trainer with
the MSE distillation loss (`trainer`); MAE / RMSE / R² / Pearson / Spearman of the student
(`evaluate`); the student, predictions, the gold-only baseline and the side-by-side measurements
(`save`); the report (`report`). Scores are learnt in the teacher head's units (0..1 of its
label_range when it has one) and reported in the label's own units.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import llmtune.inference.registry as registry
import llmtune.jobs.distill.common as common
import llmtune.jobs.distill.reports as reports
from llmtune.console import say
from llmtune.data.numeric import numeric_label
from llmtune.data.templates import template_of
from llmtune.jobs.distill.checks import (
    check_regression_models,
    check_scores,
    gold_indices,
    has_gold,
    read_rows,
    rows_of,
)
from llmtune.jobs.distill.labelling import (
    JOURNAL,
    TeacherOutputs,
    journal_outputs,
    journal_stamp,
    teacher_engine,
)
from llmtune.jobs.distill.losses import ScoreCollator, ScoreDistillationTrainer
from llmtune.metrics import regression_metrics
from llmtune.models.loading import LoadedModel
from llmtune.models.regression_head import LABEL_RANGE, from_unit, to_unit
from llmtune.recipes.distill import DistillRecipe
from llmtune.runs.job import Metrics, Outcome, Plan, TrainingJob
from llmtune.runs.rundir import RunDir
from llmtune.runs.training import callbacks, preflight, resolve_training

HEAD_LABELS = ["score"]
HEADLINE = ("mae", "rmse", "r2", "pearson", "spearman")
MEASURES = reports.Measures(
    metrics=HEADLINE,
    kept_by="spearman",
    kept_why=(
        "the student's Spearman correlation with the gold scores over the teacher's: scale-free and "
        "bounded, it measures the ranking a score is mostly used for (thresholds, top-k); a ratio of "
        "R² is unstable when the teacher's R² is near 0 and meaningless when it is negative"
    ),
)


class RegressionDistill(TrainingJob):
    """The steps the shared training run calls, in order."""

    def __init__(self, recipe: DistillRecipe) -> None:
        self.recipe = recipe
        self.template = template_of(recipe.data.template)
        self.comparison: dict[str, Any] = {}

    def preflight(self) -> list[Path]:
        if (
            self.recipe.engine == "onnx"
        ):  # the teacher scores on ONNX Runtime: refuse early where it is missing
            registry.require("onnx")
        self.splits = read_rows(self.recipe, self.template)
        check_scores(self.splits)
        self.device = preflight(self.recipe.student, "full", self.recipe.training)
        return self.splits.files

    def setup(self, run_dir: Path, dry_run: bool = False) -> Plan:
        recipe = self.recipe
        self.label_range = check_regression_models(recipe)
        self.teacher = common.load_teacher(recipe, "classification", HEAD_LABELS, dry_run)
        self.teacher.model.config.problem_type = "regression"
        self.student = self.build_student(dry_run)
        sizes = common.check_smaller(recipe, self.teacher, self.student)
        self.texts = common.inputs_of(self.splits, self.model_input)
        self.training = resolve_training(recipe.training, "full", "regression", len(self.splits.train))
        self.sizes = sizes.as_dict()
        details = {
            "strategy": recipe.strategy,
            "alpha": recipe.alpha,
            "label_range": self.label_range,
            "gold_rows": len(gold_indices(self.splits.train)),
        }
        return common.distill_plan(
            run_dir, recipe, "regression", self.splits, sizes, self.training, self.student, details
        )

    def build_student(self, dry_run: bool = False) -> LoadedModel:
        """The student, untrained, with a one-output head in the teacher's units."""
        corpus = (self.model_input(r, w) for r, w in rows_of(self.splits, "train"))
        student = common.new_student(
            self.recipe, self.teacher, "classification", corpus, labels=HEAD_LABELS, dry_run=dry_run
        )
        config = student.model.config
        # saved in config.json: whoever loads the student reads its outputs as the teacher's were
        config.problem_type = "regression"
        setattr(config, LABEL_RANGE, list(self.label_range) if self.label_range else None)
        common.trim_student(self.recipe, student, self.splits, self.model_input)
        return student

    def model_input(self, row: dict[str, Any], where: str | None = None) -> str:
        """The text teacher and student see for a row: the template's output, else its text."""
        return common.render(row, self.template, where)

    def trainer(self, run_dir: RunDir) -> Any:
        from llmtune.runs.callbacks import keep_stdout_clean

        recipe = self.recipe
        engine = teacher_engine(recipe, self.teacher, label_range=self.label_range)
        stamp = journal_stamp(recipe, "score")
        prompts = [t for texts in self.texts.values() for t in texts]

        def score(chunk: list[str]) -> list[dict[str, Any]]:
            return [{"score": value} for value in engine.score(chunk)]

        self.teacher_scores: TeacherOutputs = journal_outputs(
            score, prompts, run_dir.path / JOURNAL, stamp, verb="scored"
        )
        self.encoded = {name: self.encode(name) for name in self.texts}
        has_validation = self.encoded["validation"] is not None
        rows = len(self.encoded["validation"]) if has_validation else None
        trainer = ScoreDistillationTrainer(
            model=self.student.model,
            args=common.head_arguments(
                self.training, run_dir.path, self.student, recipe.seed, has_validation, validation_rows=rows
            ),
            train_dataset=self.encoded["train"],
            eval_dataset=self.encoded["validation"],
            data_collator=ScoreCollator(self.student.tokenizer),
            callbacks=callbacks(self.training, run_dir, has_validation, rows),
            alpha=recipe.alpha,
        )
        keep_stdout_clean(trainer)
        return trainer

    def teacher_score(self, text: str) -> float:
        """The teacher's score of a model input, in the label's units."""
        return float(self.teacher_scores.of(text)["score"])

    def encode(self, name: str) -> Any:
        """A datasets.Dataset for one split: tokens, teacher and gold scores in the head's units."""
        rows = getattr(self.splits, name).rows
        if not rows:
            return None
        texts = self.texts[name]
        columns = {
            "teacher": [to_unit(self.teacher_score(t), self.label_range) for t in texts],
            "gold": [to_unit(numeric_label(r), self.label_range) if has_gold(r) else 0.0 for r in rows],
            "has_gold": [has_gold(r) for r in rows],
        }
        return common.token_dataset(self.student, texts, self.recipe.data.max_length, columns)

    def predict(self, trainer: Any) -> list[float]:
        """The trainer's model's scores of the test rows, in the label's units."""
        outputs = common.test_outputs(trainer, self.encoded["test"])
        return [from_unit(float(v), self.label_range) for v in outputs.reshape(-1)]

    def evaluate(self, trainer: Any) -> Metrics | None:
        self.predicted = self.predict(trainer)
        metrics = regression_metrics(self.gold_test(), self.predicted)
        teacher = [self.teacher_score(t) for t in self.texts["test"]]
        # how closely the student follows the teacher, beside how well it predicts the gold
        metrics["mae_to_teacher"] = regression_metrics(teacher, self.predicted)["mae"]
        self.student_test = metrics  # the last call is the trained student's
        return metrics

    def gold_test(self) -> list[float]:
        return [numeric_label(r) for r in self.splits.test.rows]

    def save(self, trainer: Any, run_dir: RunDir) -> None:
        from llmtune.models.export import save_trained_model

        folder = save_trained_model(trainer.model, self.student, run_dir.path / "model", self.recipe)
        self.write_predictions(run_dir)
        teacher = [self.teacher_score(t) for t in self.texts["test"]]
        self.teacher_test = regression_metrics(self.gold_test(), teacher)
        self.baseline = self.train_baseline(run_dir) if self.recipe.baseline else None
        trained = common.trained_student(trainer, self.student)
        speed = common.head_speed(self.recipe, self.teacher, trained, self.texts["test"])
        results = {"teacher": self.teacher_test, "student": self.student_test, "baseline": self.baseline}
        self.comparison = reports.side_by_side(self.recipe, self.sizes, results, speed, folder, MEASURES)
        self.comparison["baseline_rows"] = self.baseline["rows"] if self.baseline else None
        self.comparison["teacher_rows_scored"] = self.teacher_scores.labelled
        self.comparison["teacher_rows_reused"] = self.teacher_scores.reused

    def train_baseline(self, run_dir: RunDir) -> Metrics | None:
        """The same student, built afresh, trained on the gold scores alone (same settings)."""
        from llmtune.runs.callbacks import keep_stdout_clean

        gold_rows = gold_indices(self.splits.train)
        if not gold_rows:
            say("baseline skipped: no transfer row has a gold score")
            return None
        student = self.build_student()
        settings = resolve_training(self.recipe.training, "full", "regression", len(gold_rows))
        say(f"baseline: the same student trained on the {len(gold_rows)} gold-scored rows alone")
        started = time.monotonic()
        folder = run_dir.path / "checkpoints" / "baseline"
        trainer = ScoreDistillationTrainer(
            model=student.model,
            args=common.head_arguments(settings, folder, student, self.recipe.seed, False, save=False),
            train_dataset=self.encoded["train"].select(gold_rows),
            data_collator=ScoreCollator(student.tokenizer),
            alpha=0.0,  # gold scores only
        )
        keep_stdout_clean(trainer)
        result = trainer.train()
        metrics = regression_metrics(self.gold_test(), self.predict(trainer))
        metrics.update(
            rows=len(gold_rows), steps=result.global_step, train_seconds=round(time.monotonic() - started, 2)
        )
        say(f"baseline: test spearman {metrics['spearman']} after {result.global_step} steps")
        return metrics

    def write_predictions(self, run_dir: RunDir) -> None:
        """predictions.jsonl: per test row the gold score, the student's and the teacher's."""
        records = [
            {
                "id": common.row_id(row, where),
                "text": text,
                "gold": numeric_label(row),
                "prediction": predicted,
                "teacher_prediction": self.teacher_score(text),
            }
            for (row, where), text, predicted in zip(
                rows_of(self.splits, "test"), self.texts["test"], self.predicted
            )
        ]
        common.write_predictions(run_dir, records)

    def report(self, run_dir: RunDir, outcome: Outcome) -> None:
        extra = {"teacher": self.teacher_test, "baseline": self.baseline}
        notes = (
            [f"label_range {self.label_range} (scores shown in the label's units)"]
            if self.label_range
            else []
        )
        reports.report(self.recipe, run_dir, outcome, self.comparison, MEASURES, extra, notes)

    def headline(self, metrics: Metrics | None) -> dict[str, Any] | None:
        if metrics is None:
            return None
        return {k: round(metrics[k], 4) if metrics[k] is not None else None for k in HEADLINE}

    def warnings(self, outcome: Outcome) -> list[str]:
        return common.kept_warning(self.comparison, "test Spearman correlation")
