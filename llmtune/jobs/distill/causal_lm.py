"""`llmtune distill` with `task: causal_lm`: a smaller language model learns from a bigger one.

Rows are a `prompt` (or data.template over the row's fields) and, where the data has one, a gold
`completion`; test rows need their completion (the loss and exact match are measured on it).
Strategies (`trainer`):
- `sequences`: the teacher completes every transfer prompt through the shared inference engine,
  journaled in the run directory (`teacher_generations.jsonl`, resumable like the labels), and
  the student is SFT-trained on prompt + teacher completion with TRL's SFTTrainer (loss on the
  completion only). The student may use another tokenizer.
- `logits`: the student learns the teacher's token distributions over the data's completions
  (`lm_losses.py`; same vocabulary).
- `on_policy`: the student samples completions of the transfer prompts and learns the teacher's
  distributions over its own tokens, through TRL's DistillationTrainer (`on_policy.py`; same
  vocabulary; transfer rows need only a prompt).
Then (`save`): loss / perplexity of the gold completions, exact match of greedy completions, and
generated tokens/s of teacher and student on the same test prompts (`lm_eval.py`), in the
report (`reports.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llmtune.inference.registry as registry
import llmtune.jobs.distill.common as common
import llmtune.jobs.distill.reports as reports
from llmtune.data.readers import Splits, refuse
from llmtune.data.templates import Template, template_of
from llmtune.errors import BadInput, Problem
from llmtune.jobs.distill.checks import SPLITS, read_splits, rows_of
from llmtune.jobs.distill.labelling import (
    GENERATIONS,
    TeacherOutputs,
    journal_outputs,
    journal_stamp,
    teacher_engine,
)
from llmtune.jobs.distill.lm_eval import generation_speed, lm_metrics
from llmtune.models.loading import LoadedModel, inspect_model
from llmtune.models.positions import check_new_tokens
from llmtune.recipes.distill import DistillRecipe
from llmtune.runs.job import Metrics, Outcome, Plan, TrainingJob
from llmtune.runs.rundir import RunDir
from llmtune.runs.training import callbacks, preflight, resolve_training, training_arguments

HEADLINE = ("loss", "perplexity", "exact_match")
MEASURES = reports.Measures(
    metrics=HEADLINE,
    kept_by="exact_match",
    kept_why=(
        "the student's exact match with the gold completions over the teacher's: both models are "
        "judged on the same text, whatever their tokenizers (perplexities per token are only "
        "comparable between models that share a tokenizer)"
    ),
    speed=("ms_per_row", "rows_per_s", "tokens_per_s"),
    speed_note="greedy generation of the test prompts through the inference engine; the speedup is the "
    "ratio of generated tokens/s",
)
SMALLER_HINT = "keep fewer blocks, or a smaller path or scratch model"  # trim_vocab is for encoders
GENERATION_CHUNK = 16  # prompts completed between two journal writes: what a kill can lose


class LanguageModelDistill(TrainingJob):
    """The steps the shared training run calls, in order."""

    def __init__(self, recipe: DistillRecipe) -> None:
        self.recipe = recipe
        self.template = template_of(recipe.data.template)
        self.comparison: dict[str, Any] = {}

    # ------------------------------------------------------------------ preflight
    def preflight(self) -> list[Path]:
        if self.recipe.engine == "vllm":  # the teacher generates on vLLM: refuse early where it is missing
            registry.require("vllm")
        self.splits = read_lm_rows(self.recipe, self.template)
        self.device = preflight(self.recipe.student, "full", self.recipe.training)
        return self.splits.files

    def prompt(self, row: dict[str, Any], where: str | None = None) -> str:
        """The prompt both models see: the template's output, else the row's prompt."""
        return common.render(row, self.template, where, field="prompt")

    # ---------------------------------------------------------------------- setup
    def setup(self, run_dir: Path, dry_run: bool = False) -> Plan:
        recipe = self.recipe
        teacher_info = inspect_model(recipe.teacher, recipe, "teacher")
        if teacher_info.head != "causal_lm":
            raise BadInput(
                f"task: causal_lm needs a causal language model as teacher; this one is "
                f"{teacher_info.head or teacher_info.architectures}",
                key="teacher.path",
            )
        new_tokens = recipe.generation.max_new_tokens
        check_new_tokens(recipe, recipe.teacher, new_tokens, "generation.max_new_tokens", "teacher")
        self.teacher = common.load_teacher(recipe, "causal_lm", dry_run=dry_run)
        self.student = self.build_student(dry_run)
        sizes = common.check_smaller(recipe, self.teacher, self.student, SMALLER_HINT)
        if recipe.strategy in ("logits", "on_policy"):
            from llmtune.jobs.distill.lm_losses import check_logit_widths, shared_vocabulary

            self.vocab_size = shared_vocabulary(
                self.teacher.tokenizer, self.student.tokenizer, recipe.strategy
            )
            check_logit_widths(self.teacher.model, self.student.model, self.vocab_size)
        if recipe.strategy == "on_policy":
            from llmtune.jobs.distill.on_policy import check_output_widths

            check_output_widths(self.teacher.model, self.student.model)
        self.prompts = common.inputs_of(self.splits, self.prompt)
        self.golds = {name: [gold_of(r) for r in getattr(self.splits, name).rows] for name in SPLITS}
        self.training = resolve_training(recipe.training, "full", "causal_lm", len(self.splits.train))
        self.sizes = sizes.as_dict()
        details = {
            "strategy": recipe.strategy,
            "temperature": recipe.temperature,
            "alpha": recipe.alpha,
            "beta": recipe.beta,
            "gold_rows": sum(1 for g in self.golds["train"] if g is not None),
        }
        if recipe.strategy == "on_policy":  # learns from the teacher alone, on its own completions
            del details["alpha"], details["gold_rows"]
            details["completion_tokens"] = recipe.generation.max_new_tokens
        return common.distill_plan(
            run_dir, recipe, "causal_lm", self.splits, sizes, self.training, self.student, details
        )

    def build_student(self, dry_run: bool = False) -> LoadedModel:
        """The student, untrained: teacher blocks, a path or a scratch model."""
        corpus = (self.prompt(r, w) + (gold_of(r) or "") for r, w in rows_of(self.splits, "train"))
        return common.new_student(self.recipe, self.teacher, "causal_lm", corpus, dry_run=dry_run)

    # -------------------------------------------------------------------- trainer
    def trainer(self, run_dir: RunDir) -> Any:
        from llmtune.runs.callbacks import keep_stdout_clean

        strategy = self.recipe.strategy
        if strategy == "on_policy":  # prompts only: the student writes the completions
            from llmtune.jobs.distill.on_policy import on_policy_trainer

            trainer = on_policy_trainer(self, run_dir)
        else:
            completions = self.golds
            if strategy == "sequences":
                self.generations = self.teacher_generations(run_dir)
                completions = {
                    name: [self.generations.of(p)["completion"] for p in self.prompts[name]]
                    for name in ("train", "validation")
                }
            datasets = {name: self.dataset(name, completions[name]) for name in ("train", "validation")}
            trainer = self.sft_trainer(run_dir, datasets)
        keep_stdout_clean(trainer)
        return trainer

    def teacher_generations(self, run_dir: RunDir) -> TeacherOutputs:
        """The teacher's completion of every transfer and validation prompt, from the journal
        where it has them (same teacher, prompt and generation settings), else generated now."""
        recipe, generation = self.recipe, self.recipe.generation
        engine = teacher_engine(recipe, self.teacher)
        stamp = journal_stamp(recipe, generation.model_dump())

        def complete(chunk: list[str]) -> list[dict[str, Any]]:
            outputs = engine.generate(
                chunk,
                max_new_tokens=generation.max_new_tokens,
                temperature=generation.temperature,
                top_p=generation.top_p,
                stop=generation.stop,
                seed=recipe.seed,
            )
            return [{"completion": g.texts[0], "new_tokens": g.new_tokens} for g in outputs]

        prompts = self.prompts["train"] + self.prompts["validation"]
        path = run_dir.path / GENERATIONS
        return journal_outputs(complete, prompts, path, stamp, verb="generated", chunk_rows=GENERATION_CHUNK)

    def dataset(self, name: str, completions: list[str | None]) -> Any:
        """prompt/completion rows for TRL (None without rows); rows without a completion (an
        empty teacher completion, or no gold one for logits) have nothing to learn: left out."""
        import datasets

        pairs = [(p, c) for p, c in zip(self.prompts[name], completions) if c]
        if not pairs:
            if name == "train":
                raise BadInput(
                    "no transfer row has a completion to learn from (the teacher completed none, or the "
                    "rows have no completion for strategy: logits)",
                    key="data.train",
                )
            return None
        return datasets.Dataset.from_dict(
            {"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]}
        )

    def sft_trainer(self, run_dir: RunDir, data: dict[str, Any]) -> Any:
        """SFTTrainer on prompt + completion (sequences), or its logits-distillation subclass."""
        from trl import SFTConfig, SFTTrainer

        recipe = self.recipe
        has_validation = data["validation"] is not None
        args = training_arguments(
            self.training,
            run_dir.path,
            device=self.student.device,
            seed=recipe.seed,
            has_validation=has_validation,
            extra={"max_length": recipe.data.max_length, "dataset_num_proc": None},
            args_class=SFTConfig,
        )
        common = {
            "model": self.student.model,
            "args": args,
            "train_dataset": data["train"],
            "eval_dataset": data["validation"],
            "processing_class": self.student.tokenizer,
            "callbacks": callbacks(self.training, run_dir, has_validation),
        }
        if recipe.strategy == "sequences":
            return SFTTrainer(**common)
        from llmtune.jobs.distill.lm_losses import LogitsDistillationTrainer

        return LogitsDistillationTrainer(
            **common,
            teacher=self.teacher.model,
            vocab_size=self.vocab_size,
            beta=recipe.beta,
            temperature=recipe.temperature,
            alpha=recipe.alpha,
        )

    # ------------------------------------------------------------------- evaluate
    def evaluate(self, trainer: Any) -> Metrics | None:
        student = common.trained_student(trainer, self.student)
        # the last call is the trained student's
        self.student_test, self.student_predictions = self.measure(student)
        return self.student_test

    def measure(self, loaded: LoadedModel) -> tuple[Metrics, list[str]]:
        recipe = self.recipe
        return lm_metrics(
            loaded,
            self.prompts["test"],
            self.golds["test"],
            recipe.generation,
            recipe.data.max_length,
            recipe.measure_batch_size,
        )

    # ----------------------------------------------------------------------- save
    def save(self, trainer: Any, run_dir: RunDir) -> None:
        from llmtune.models.export import save_trained_model

        folder = save_trained_model(trainer.model, self.student, run_dir.path / "model", self.recipe)
        self.teacher_test, self.teacher_predictions = self.measure(self.teacher)
        self.write_predictions(run_dir)
        trained = common.trained_student(trainer, self.student)
        speed = generation_speed(
            {"teacher": self.teacher, "student": trained},
            self.prompts["test"],
            self.recipe.generation,
            self.recipe.measure_batch_size,
            self.recipe.data.max_length,
        )
        results = {"teacher": self.teacher_test, "student": self.student_test, "baseline": None}
        self.comparison = reports.side_by_side(self.recipe, self.sizes, results, speed, folder, MEASURES)
        self.comparison["same_tokenizer"] = (
            self.teacher.tokenizer.get_vocab() == self.student.tokenizer.get_vocab()
        )
        if self.recipe.strategy == "sequences":
            self.comparison["teacher_rows_generated"] = self.generations.labelled
            self.comparison["teacher_rows_reused"] = self.generations.reused

    def write_predictions(self, run_dir: RunDir) -> None:
        """predictions.jsonl: per test row the prompt, gold completion, student's and teacher's."""
        student, teacher = self.student_predictions, self.teacher_predictions
        rows = rows_of(self.splits, "test")
        records = [
            {
                "id": common.row_id(row, where),
                "prompt": prompt,
                "gold": gold,
                "prediction": mine,
                "teacher_prediction": theirs,
            }
            for (row, where), prompt, gold, mine, theirs in zip(
                rows, self.prompts["test"], self.golds["test"], student, teacher
            )
        ]
        common.write_predictions(run_dir, records)

    # --------------------------------------------------------------------- report
    def report(self, run_dir: RunDir, outcome: Outcome) -> None:
        extra = {"teacher": self.teacher_test, "baseline": None}
        notes = ["no gold-only baseline for causal_lm yet"]
        if not self.comparison["same_tokenizer"]:
            notes.append("teacher and student tokenize differently: compare their perplexities with care")
        reports.report(self.recipe, run_dir, outcome, self.comparison, MEASURES, extra, notes)

    def headline(self, metrics: Metrics | None) -> dict[str, Any] | None:
        if metrics is None:
            return None
        return {k: round(metrics[k], 4) for k in HEADLINE if metrics.get(k) is not None}


def gold_of(row: dict[str, Any]) -> str | None:
    """A row's gold completion, None when it has none."""
    value = row.get("completion")
    return None if value in (None, "") else str(value)


def read_lm_rows(recipe: DistillRecipe, template: Template | None) -> Splits:
    """Transfer rows (a prompt; a completion too for strategy: logits), validation rows, and test
    rows with their gold completion; every missing field reported with file:line at once."""
    splits = read_splits(recipe, template, "prompt", None, "test rows with gold completions")
    need_gold = ("test", "train", "validation") if recipe.strategy == "logits" else ("test",)
    missing = [
        Problem(f"{name} row has no completion", file=w)
        for name in need_gold
        for r, w in rows_of(splits, name)
        if gold_of(r) is None
    ]
    if missing:
        why = (
            "strategy: logits learns the teacher's distributions over the data's completions; "
            if (recipe.strategy == "logits")
            else ""
        )
        refuse(missing, f"{why}rows need a completion (data.columns: {{completion: COLUMN}})")
    return splits
