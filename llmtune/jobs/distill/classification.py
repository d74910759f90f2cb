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

import json
from pathlib import Path
from typing import Any

import llmtune.jobs.distill.compare as compare
from llmtune.data.templates import Template
from llmtune.errors import BadInput
from llmtune.jobs.distill.checks import (
    SPLITS,
    check_gold,
    check_student_labels,
    gold_of,
    has_gold,
    read_rows,
    resolve_labels,
    rows_of,
)
from llmtune.jobs.distill.labelling import JOURNAL, TeacherLabels, label_rows, teacher_fingerprint
from llmtune.jobs.distill.losses import NO_GOLD, Collator, DistillationTrainer
from llmtune.metrics import classification_metrics
from llmtune.models.loading import LoadedModel, load_model
from llmtune.recipes.distill import DistillRecipe
from llmtune.runs.lifecycle import Metrics, Outcome, Plan, count_parameters
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


def run(recipe: DistillRecipe, options: JobOptions) -> dict[str, Any]:
    """Distill a classifier from a validated recipe; returns the summary (for --json)."""
    from llmtune.runs.lifecycle import run_training

    return run_training(ClassificationDistill(recipe), options)


class ClassificationDistill:
    """The steps the shared training run calls, in order."""

    def __init__(self, recipe: DistillRecipe) -> None:
        self.recipe = recipe
        self.template = (
            Template(recipe.data.template, where="data.template") if recipe.data.template else None
        )
        self.comparison: dict[str, Any] = {}

    # ------------------------------------------------------------------ preflight
    def preflight(self) -> list[Path]:
        self.splits = read_rows(self.recipe, self.template)
        self.device = preflight(self.recipe.student, "full", self.recipe.training)
        return self.splits.files

    # ---------------------------------------------------------------------- setup
    def setup(self, run_dir: Path, dry_run: bool = False) -> Plan:
        recipe = self.recipe
        self.labels = resolve_labels(recipe)
        check_gold(self.splits, self.labels)
        self.teacher = load_model(
            recipe.teacher,
            recipe,
            head="classification",
            key="teacher",
            labels=self.labels,
            empty_weights=dry_run,
        )
        self.student = self.build_student(dry_run)
        teacher_params = count_parameters(self.teacher.model)[1]
        trainable, total = count_parameters(self.student.model)
        if total >= teacher_params:
            raise BadInput(
                f"the student has {total:,} parameters and the teacher {teacher_params:,}: a student must "
                "be smaller (keep fewer blocks, a smaller path or scratch model, or trim_vocab)",
                file=str(recipe.source) if recipe.source else None,
                key="student",
            )
        self.texts = {
            name: [self.model_input(r, w) for r, w in rows_of(self.splits, name)] for name in SPLITS
        }
        self.training = resolve_training(recipe.training, "full", "classification", len(self.splits.train))
        self.comparison = {"teacher_params": teacher_params, "student_params": total}
        return Plan(
            run_dir=run_dir,
            task="classification",
            method=f"distill ({recipe.strategy})",
            model=recipe.student.describe(),
            rows=self.splits.counts(),
            skipped_rows=self.splits.skipped(),
            trainable_params=trainable,
            total_params=total,
            planned_steps=planned_steps(self.training, len(self.splits.train)),
            device=self.student.device,
            precision=resolve_precision(recipe.training, self.student.device),
            details={
                "teacher": recipe.teacher.describe(),
                "teacher_params": teacher_params,
                "size_ratio": round(total / teacher_params, 4),
                "labels": self.labels,
                "strategy": recipe.strategy,
                "temperature": recipe.temperature,
                "alpha": recipe.alpha,
                "gold_rows": sum(1 for r in self.splits.train.rows if has_gold(r)),
            },
        )

    def build_student(self, dry_run: bool = False) -> LoadedModel:
        """The student, untrained: teacher blocks, a path or a scratch model; trimmed if asked."""
        from llmtune.models.students import keep_blocks, trim_vocabulary

        spec = self.recipe.student
        if spec.from_teacher is not None:
            model = keep_blocks(self.teacher.model, spec.from_teacher.layers)
            student = LoadedModel(model, self.teacher.tokenizer, spec.describe(), self.teacher.device)
        else:
            check_student_labels(self.recipe, self.labels)
            corpus = (self.model_input(r, w) for r, w in rows_of(self.splits, "train"))
            student = load_model(
                spec,
                self.recipe,
                head="classification",
                key="student",
                labels=self.labels,
                corpus=corpus,
                for_training=True,
                method="full",
                empty_weights=dry_run,
            )
        if spec.trims_vocab:
            texts = [self.model_input(r, w) for name in SPLITS for r, w in rows_of(self.splits, name)]
            student.model, student.tokenizer = trim_vocabulary(
                student.model, student.tokenizer, texts, self.recipe.data.max_length
            )
        return student

    def gold_indices(self) -> list[int]:
        """Transfer rows that have a gold label (the baseline trains on these)."""
        return [i for i, r in enumerate(self.splits.train.rows) if has_gold(r)]

    def model_input(self, row: dict[str, Any], where: str | None = None) -> str:
        """The text teacher and student see for a row: the template's output, else its text."""
        return self.template.render(row, where=where) if self.template else str(row["text"])

    # -------------------------------------------------------------------- trainer
    def trainer(self, run_dir: RunDir) -> Any:
        from llmtune.inference.engine import Engine
        from llmtune.runs.callbacks import keep_stdout_clean

        recipe = self.recipe
        engine = Engine(self.teacher, batch_size=recipe.measure_batch_size, max_length=recipe.data.max_length)
        stamp = {"teacher": teacher_fingerprint(recipe), "prompt": self.prompt_fingerprint()}
        prompts = [t for name in SPLITS for t in self.texts[name]]
        self.teacher_labels = label_rows(engine, prompts, self.labels, run_dir.path / JOURNAL, stamp)
        self.encoded = {name: self.encode(name, self.student, self.teacher_labels) for name in SPLITS}
        has_validation = self.encoded["validation"] is not None
        trainer = DistillationTrainer(
            model=self.student.model,
            args=training_arguments(
                self.training,
                run_dir.path,
                device=self.student.device,
                seed=recipe.seed,
                has_validation=has_validation,
                extra={"remove_unused_columns": False, "label_names": ["gold"]},
            ),
            train_dataset=self.encoded["train"],
            eval_dataset=self.encoded["validation"],
            data_collator=Collator(self.student.tokenizer),
            compute_metrics=gold_metrics(self.labels),
            callbacks=callbacks(self.training, run_dir, has_validation),
            temperature=recipe.temperature,
            alpha=recipe.alpha,
            hard=recipe.strategy == "hard_labels",
        )
        keep_stdout_clean(trainer)
        return trainer

    def prompt_fingerprint(self) -> str:
        from llmtune.inference.journal import text_fingerprint

        data = self.recipe.data
        return text_fingerprint(data.template, data.columns, data.max_length, self.labels)

    def encode(self, name: str, student: LoadedModel, teacher: TeacherLabels | None) -> Any:
        """A datasets.Dataset for one split: tokens, the teacher's probabilities, the gold index."""
        import datasets

        rows = getattr(self.splits, name).rows
        if not rows:
            return None
        texts = self.texts[name]
        enc = student.tokenizer(texts, truncation=True, max_length=self.recipe.data.max_length)
        index = {label: i for i, label in enumerate(self.labels)}
        columns = {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "gold": [index[str(r["label"])] if has_gold(r) else NO_GOLD for r in rows],
        }
        if teacher is not None:
            columns["teacher"] = [teacher.of(t) for t in texts]
        return datasets.Dataset.from_dict(columns)

    # ------------------------------------------------------------------- evaluate
    def evaluate(self, trainer: Any) -> Metrics | None:
        logits = trainer.predict(self.encoded["test"], metric_key_prefix="test").predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        self.probabilities = softmax(logits)
        predicted = [self.labels[int(i)] for i in logits.argmax(-1)]
        teacher = [self.labels[argmax(self.teacher_labels.of(t))] for t in self.texts["test"]]
        metrics = classification_metrics(gold_of(self.splits.test), predicted, self.labels)
        metrics["teacher_agreement"] = sum(a == b for a, b in zip(predicted, teacher)) / len(teacher)
        self.student_test = metrics  # the last call is the trained student's
        return metrics

    # ----------------------------------------------------------------------- save
    def save(self, trainer: Any, run_dir: RunDir) -> None:
        from llmtune.models.export import save_trained_model

        folder = save_trained_model(
            trainer.model, self.student, run_dir.path / "model", self.recipe, labels=self.labels
        )
        self.write_predictions(run_dir)
        self.teacher_test = self.teacher_metrics()
        self.baseline = compare.train_baseline(self, run_dir) if self.recipe.baseline else None
        trained = LoadedModel(trainer.model, self.student.tokenizer, "", self.student.device)
        speed = compare.measure_speed(
            {"teacher": self.teacher, "student": trained},
            self.texts["test"],
            self.recipe.measure_batch_size,
            self.recipe.data.max_length,
        )
        sizes = self.comparison
        self.comparison = compare.side_by_side(
            self.recipe, sizes, self.teacher_test, self.student_test, self.baseline, speed, folder
        )
        self.comparison["teacher_rows_labelled"] = self.teacher_labels.labelled
        self.comparison["teacher_rows_reused"] = self.teacher_labels.reused

    def teacher_metrics(self) -> Metrics:
        """The teacher's test metrics, from its labels in the journal."""
        predicted = [self.labels[argmax(self.teacher_labels.of(t))] for t in self.texts["test"]]
        return classification_metrics(gold_of(self.splits.test), predicted, self.labels)

    def write_predictions(self, run_dir: RunDir) -> None:
        """predictions.jsonl: per test row the student's and the teacher's prediction and scores."""
        lines = []
        for (row, where), text, probs in zip(
            rows_of(self.splits, "test"), self.texts["test"], self.probabilities
        ):
            teacher = self.teacher_labels.of(text)
            record = {
                "id": row["id"] if row.get("id") is not None else where,
                "text": text,
                "gold": str(row["label"]),
                "prediction": self.labels[argmax(probs)],
                "scores": dict(zip(self.labels, probs)),
                "teacher_prediction": self.labels[argmax(teacher)],
                "teacher_scores": dict(zip(self.labels, teacher)),
            }
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        run_dir.write_text("predictions.jsonl", "".join(lines))

    # --------------------------------------------------------------------- report
    def report(self, run_dir: RunDir, outcome: Outcome) -> None:
        extra = {"teacher": self.teacher_test, "baseline": self.baseline}
        compare.report(self.recipe, run_dir, outcome, self.comparison, extra)

    def headline(self, metrics: Metrics | None) -> dict[str, Any] | None:
        if metrics is None:
            return None
        return {**{k: round(metrics[k], 4) for k in HEADLINE}, "accuracy_ci95": metrics["accuracy_ci95"]}

    def warnings(self, outcome: Outcome) -> list[str]:
        kept = self.comparison.get("quality_kept")
        if kept is not None and kept < 0.9:
            return [
                f"the student keeps only {100 * kept:.1f}% of the teacher's test accuracy: train longer, "
                "keep more blocks, or add transfer rows"
            ]
        return []


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
