"""`llmtune finetune` with `task: causal_lm`: supervised fine-tuning of a language model.

Rows are `prompt` + `completion` (loss on the completion only), `messages` (chat template, loss on
the assistant turns) or `text` (plain language modelling). TRL's SFTTrainer tokenizes, masks,
truncates, packs and trains, for every method (prefix and prompt tuning included: TRL's loss runs
inside the model's forward, after peft has prepended the virtual tokens and their -100 labels).

What TRL cannot do is done here, narrowly:
- conversations whose chat template has no `{% generation %}` markers (and is not one TRL knows
  how to patch) get their assistant tokens from prefix renderings (`assistant_token_mask`);
- rows left with nothing to learn within `data.max_length` are dropped and counted before the
  run starts, so that an all-dropped split is bad input (exit 2) rather than an empty run.

At the end: loss and perplexity on the test split, and exact match of greedy completions (through
the shared inference engine).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from llmtune.console import table
from llmtune.jobs.finetune.retain import measure, measured_split, source_metrics
from llmtune.jobs.finetune.sft_data import (
    SftData,
    SftSplit,
    prompt_text,
    setup_sft_data,
    sft_dataset,
    trl_chat_template,
    use_chat_template,
)
from llmtune.models.loading import LoadedModel, load_model
from llmtune.models.methods import apply_method
from llmtune.recipes.common import Training
from llmtune.recipes.finetune import FinetuneRecipe
from llmtune.runs.job import (
    Metrics,
    Outcome,
    Plan,
    TrainingJob,
    count_parameters,
    training_plan,
    warnings_markdown,
)
from llmtune.runs.lifecycle import run_training
from llmtune.runs.options import JobOptions
from llmtune.runs.rundir import RunDir
from llmtune.runs.training import (
    callbacks,
    preflight,
    resolve_training,
    training_arguments,
)


def run(recipe: FinetuneRecipe, options: JobOptions) -> dict[str, Any]:
    """Run one causal-LM fine-tune from a validated recipe; returns the summary (for --json)."""
    return run_training(SftJob(recipe), options)


class SftJob(TrainingJob):
    """The SFT steps the shared training run calls, in order."""

    def __init__(self, recipe: FinetuneRecipe) -> None:
        self.recipe = recipe

    def preflight(self) -> list[Path]:
        self.data = setup_sft_data(self.recipe)
        preflight(self.recipe.model, self.recipe.method.type, self.recipe.training)
        return self.data.splits.files

    def setup(self, run_dir: Path, dry_run: bool = False) -> Plan:
        recipe, splits = self.recipe, self.data.splits
        corpus = (str(r.get("text") or r.get("prompt") or "") for r in splits.train.rows)
        self.loaded = load_model(
            recipe.model,
            recipe,
            head="causal_lm",
            corpus=corpus,
            for_training=True,
            method=recipe.method.type,
            empty_weights=dry_run,  # a dry run only counts parameters: no weights read
        )
        if "messages" in (self.data.format, self.data.retain_format):
            use_chat_template(recipe, self.loaded.tokenizer)
        from llmtune.models.export import snapshot_base

        self.base = snapshot_base(self.loaded.model, recipe)
        self.model = apply_method(self.loaded.model, recipe.method, "causal_lm", self.loaded.tokenizer)
        tokenizer = self.loaded.tokenizer
        self.chat_template = trl_chat_template(tokenizer) if self.data.format == "messages" else None
        self.splits = {
            name: sft_dataset(
                getattr(splits, name), self.data, tokenizer, recipe.data.max_length, name, self.chat_template
            )
            for name in ("train", "validation", "test")
        }
        self.retain_split = self._retain_split()
        train_rows = len(self.splits["train"].rows)
        self.training = resolve_training(recipe.training, recipe.method.type, recipe.task, train_rows)
        return training_plan(
            run_dir,
            task=recipe.task,
            method=recipe.method.type,
            model=recipe.model.describe(),
            rows=splits.counts(),
            skipped_rows=splits.skipped(),
            parameters=count_parameters(self.model),
            training=self.training,
            training_rows=train_rows,
            device=self.loaded.device,
            details={
                "data_format": self.data.format,
                "epochs": self.training.epochs,
                "learning_rate": self.training.learning_rate,
                **({"sources": splits.sources} if splits.sources else {}),
            },
        )

    def _retain_split(self) -> SftSplit | None:
        """evaluation.retain's general rows, each in its own format (no template)."""
        fmt = self.data.retain_format
        if fmt is None:
            return None
        data = SftData(self.data.splits, fmt, None)
        tokenizer = self.loaded.tokenizer
        chat_template = trl_chat_template(tokenizer) if fmt == "messages" else None
        rows = self.data.splits.retain
        return sft_dataset(rows, data, tokenizer, self.recipe.data.max_length, "retain", chat_template)

    def trainer(self, run_dir: RunDir) -> Any:
        return _trainer(
            self.recipe, self.training, run_dir, self.loaded, self.model, self.splits, self.chat_template
        )

    def evaluate(self, trainer: Any) -> Metrics | None:
        test = self.splits["test"]
        return None if test is None else evaluate_lm(trainer, self.recipe, self.data, self.loaded, test)

    def retain(self, trainer: Any) -> Metrics | None:
        """Loss, perplexity and token accuracy on evaluation.retain's general rows."""
        return (
            None
            if self.retain_split is None
            else measure(trainer, self.retain_split.dataset, perplexity=True)
        )

    def sources(self, trainer: Any) -> dict[str, Metrics] | None:
        """Per source of a mixture: weight, rows drawn, and the final model's loss on its rows."""
        splits = self.data.splits
        split = measured_split(splits)
        chosen = self.splits[split]
        dataset, rows = (chosen.dataset, chosen.rows) if chosen else (None, [])
        return source_metrics(trainer, splits, split, dataset, rows, perplexity=True)

    def save(self, trainer: Any, run_dir: RunDir) -> None:
        from llmtune.models.export import save_trained_model

        save_trained_model(
            trainer.model,
            self.loaded,
            run_dir.path / "model",
            self.recipe,
            merge=self.recipe.export.merge_adapter,
            base=self.base,
        )

    def report(self, run_dir: RunDir, outcome: Outcome) -> None:
        from llmtune.runs.plots import training_curves

        if outcome.test is not None:
            table("test metrics", ["metric", "before training", "after training"], _test_table(outcome))
        run_dir.write_text("report.md", _report(self.recipe, outcome) + training_curves(run_dir.path))

    def headline(self, metrics: Metrics | None) -> Metrics | None:
        return metrics


def _trainer(
    recipe: FinetuneRecipe,
    training: Training,
    run_dir: RunDir,
    loaded: LoadedModel,
    model: Any,
    splits: dict[str, SftSplit | None],
    chat_template: str | None,
) -> Any:
    """TRL's SFTTrainer over the splits `sft_dataset` built, for every method."""
    from trl import SFTConfig, SFTTrainer

    from llmtune.runs.callbacks import keep_stdout_clean

    validation = splits["validation"]
    has_validation = validation is not None
    rows = len(validation.dataset) if validation else None
    sft = {
        "max_length": recipe.data.max_length,
        "packing": training.packing,
        # prompt/completion rows: completion_only_loss, TRL's default for that format
        "assistant_only_loss": chat_template is not None,
        "dataset_num_proc": None,
    }
    args = training_arguments(
        training,
        run_dir.path,
        device=loaded.device,
        seed=recipe.seed,
        has_validation=has_validation,
        validation_rows=rows,
        extra=sft,
        args_class=SFTConfig,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"].dataset,
        eval_dataset=validation.dataset if validation else None,
        processing_class=loaded.tokenizer,
        callbacks=callbacks(training, run_dir, has_validation, rows),
    )
    keep_stdout_clean(trainer)
    return trainer


def evaluate_lm(
    trainer: Any, recipe: FinetuneRecipe, data: SftData, loaded: LoadedModel, split: SftSplit
) -> dict[str, Any]:
    """Loss and perplexity of the trainer's model on `split`, and exact match of its greedy
    completions of the split's prompts."""
    loss = trainer.evaluate(split.dataset, metric_key_prefix="test")["test_loss"]
    out: dict[str, Any] = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "n": len(split.rows)}
    # exact match is for rows with an answer: a text row (replayed general text) has none
    answered = [r for r in split.rows if data.format_of(r) != "text"]
    if answered and "exact_match" in recipe.metric_names():
        out.update(exact_match(replace(loaded, model=trainer.model), recipe, data, answered))
    return out


def _prompt_and_gold(row: dict[str, Any], data: SftData, tokenizer: Any) -> tuple[str, str]:
    if data.format == "prompt_completion":
        return prompt_text(row, data), str(row["completion"])
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
    return prompt, str(messages[last]["content"])


def exact_match(
    loaded: LoadedModel, recipe: FinetuneRecipe, data: SftData, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Share of `rows` whose greedy completion equals the gold one (whitespace-trimmed), and the
    first few (prompt, gold, prediction) for the report."""
    from llmtune.inference.registry import over_loaded

    pairs = [_prompt_and_gold(r, data, loaded.tokenizer) for r in rows]
    # prompts keep their last data.max_length tokens: the longest context the model trained on
    engine = over_loaded(
        "hf", loaded, batch_size=recipe.training.batch_size, max_length=recipe.data.max_length
    )
    generations = engine.generate(
        [prompt for prompt, _ in pairs], max_new_tokens=recipe.evaluation.max_new_tokens, temperature=0.0
    )
    predictions = [g.texts[0] for g in generations]
    hits = [p.strip() == gold.strip() for p, (_, gold) in zip(predictions, pairs)]
    examples = [{"prompt": p, "gold": g, "prediction": o} for (p, g), o in list(zip(pairs, predictions))[:5]]
    return {"exact_match": sum(hits) / len(hits), "examples": examples}


def _test_table(outcome: Outcome) -> list[list[Any]]:
    before, after = outcome.test_before or {}, outcome.test or {}
    names = [m for m in ("loss", "perplexity", "exact_match") if after.get(m) is not None]
    return [[m, before[m] if before.get(m) is not None else "-", after[m]] for m in names]


def _report(recipe: FinetuneRecipe, outcome: Outcome) -> str:
    from llmtune.console import markdown_table

    plan, after = outcome.plan, outcome.test
    lines = [
        f"# {recipe.name}: finetune (causal_lm, {recipe.method.type})",
        "",
        f"- model: `{plan.model}`",
        f"- data: {plan.details['data_format']}; rows: {plan.rows_text()}",
        f"- trainable parameters: {plan.trainable_params:,} of {plan.total_params:,} "
        f"({100 * plan.trainable_share:.2f}%)",
        f"- steps: {outcome.steps}, training time: {outcome.train_seconds:.2f} s on {plan.device}",
        "",
        *warnings_markdown(outcome),
    ]
    if after is not None:
        metrics = markdown_table(["metric", "before training", "after training"], _test_table(outcome))
        lines += ["## Test split", "", metrics]
    if after and after.get("examples"):
        shown = [[repr(e["prompt"][-60:]), repr(e["gold"]), repr(e["prediction"])] for e in after["examples"]]
        lines += [
            "## Greedy completions (first rows)",
            "",
            markdown_table(["prompt", "gold", "prediction"], shown),
        ]
    return "\n".join(lines)
