"""`llmtune finetune` with `task: causal_lm`: supervised fine-tuning of a language model.

Rows are `prompt` + `completion` (loss on the completion only), `messages` (chat template, loss on
the assistant turns) or `text` (plain language modelling). We tokenize and mask here, so that
every method sees the same labels; TRL's SFTTrainer then truncates, packs and trains. Prefix and
prompt tuning go through the plain HF Trainer instead: SFTTrainer's loss reads the logits
position by position, which the virtual tokens shift (trl issue 4168).

At the end: loss and perplexity on the test split, and exact match of greedy completions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.console import say, table
from llmtune.data.readers import Rows, Splits, load_splits
from llmtune.data.templates import Template
from llmtune.errors import BadInput
from llmtune.models.loading import LoadedModel, load_model
from llmtune.models.methods import apply_method
from llmtune.recipes.finetune import PROMPT_LEARNING, FinetuneRecipe
from llmtune.runs.lifecycle import Metrics, Outcome, Plan, count_parameters, planned_steps, run_training
from llmtune.runs.options import JobOptions
from llmtune.runs.rundir import RunDir
from llmtune.runs.training import callbacks, preflight, resolve_precision, training_arguments

FORMATS = {"messages": ("messages",), "prompt_completion": ("prompt", "completion"), "text": ("text",)}


@dataclass
class SftData:
    """Rows of every split, which of the three row formats they use, and the chat template."""

    splits: Splits
    format: str
    template: Template | None


def run(recipe: FinetuneRecipe, options: JobOptions) -> dict[str, Any]:
    """Run one causal-LM fine-tune from a validated recipe; returns the summary (for --json)."""
    return run_training(SftJob(recipe), options)


class SftJob:
    """The SFT steps the shared training run calls, in order."""

    def __init__(self, recipe: FinetuneRecipe) -> None:
        self.recipe = recipe

    def preflight(self) -> list[Path]:
        self.data = setup_sft_data(self.recipe)
        preflight(self.recipe.model, self.recipe.method.type, self.recipe.training)
        return self.data.splits.files

    def setup(self, run_dir: Path) -> Plan:
        recipe, splits = self.recipe, self.data.splits
        corpus = (str(r.get("text") or r.get("prompt") or "") for r in splits.train.rows)
        self.loaded = load_model(recipe.model, recipe, head="causal_lm", corpus=corpus, for_training=True)
        if self.data.format == "messages":
            use_chat_template(recipe, self.loaded.tokenizer)
        from llmtune.models.export import snapshot_base

        self.base = snapshot_base(self.loaded.model, recipe)
        self.model = apply_method(self.loaded.model, recipe.method, "causal_lm", self.loaded.tokenizer)
        self.encoded = {
            name: encode_sft(
                getattr(splits, name), self.data, self.loaded.tokenizer, recipe.data.max_length, name
            )
            for name in ("train", "validation", "test")
        }
        trainable, total = count_parameters(self.model)
        return Plan(
            run_dir=run_dir,
            task=recipe.task,
            method=recipe.method.type,
            model=recipe.model.describe(),
            rows=splits.counts(),
            skipped_rows=splits.skipped(),
            trainable_params=trainable,
            total_params=total,
            planned_steps=planned_steps(recipe.training, len(splits.train)),
            device=self.loaded.device,
            precision=resolve_precision(recipe.training, self.loaded.device),
            details={"data_format": self.data.format},
        )

    def trainer(self, run_dir: RunDir) -> Any:
        return _trainer(self.recipe, run_dir, self.loaded, self.model, self.encoded)

    def evaluate(self, trainer: Any) -> Metrics | None:
        if self.encoded["test"] is None:
            return None
        return evaluate_lm(trainer, self.recipe, self.data, self.loaded.tokenizer, self.encoded["test"])

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

        before, after = outcome.test_before, outcome.test
        if after is not None:
            names = [m for m in ("loss", "perplexity", "exact_match") if after.get(m) is not None]
            rows = [[m, before[m] if before and before.get(m) is not None else "-", after[m]] for m in names]
            table("test metrics", ["metric", "before training", "after training"], rows)
        run_dir.write_text("report.md", _report(self.recipe, outcome) + training_curves(run_dir.path))

    def headline(self, metrics: Metrics | None) -> Metrics | None:
        return metrics


def setup_sft_data(recipe: FinetuneRecipe) -> SftData:
    """Read the rows, decide their format from the first train row, check that every row has it."""
    splits = load_splits(recipe, recipe.data)
    first = splits.train.rows[0]
    template = Template(recipe.data.template, where="data.template") if recipe.data.template else None
    if "messages" in first:
        fmt = "messages"
    elif "completion" in first and ("prompt" in first or template is not None):
        fmt = "prompt_completion"
    elif "text" in first or template is not None:
        fmt = "text"
    else:
        raise BadInput(
            f"causal_lm rows need messages, prompt + completion, or text (or data.template); "
            f"the first row has {', '.join(sorted(first))}",
            file=splits.train.where[0],
        )
    if template is not None:
        template.check_fields(set(first), file=splits.train.where[0].rsplit(":", 1)[0])
    needed = FORMATS[fmt] if template is None else FORMATS[fmt][1:]
    for name in ("train", "validation", "test"):
        _check_rows(getattr(splits, name), needed, fmt)
    return SftData(splits, fmt, template)


def _check_rows(rows: Rows, needed: tuple[str, ...], fmt: str) -> None:
    for row, where in zip(rows.rows, rows.where):
        missing = [f for f in needed if row.get(f) in (None, "", [])]
        if missing:
            raise BadInput(f"{fmt} row has no {', '.join(missing)}", file=where)
        if fmt == "messages":
            messages = row["messages"]
            ok = isinstance(messages, list) and all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages
            )
            if not ok or not any(m["role"] == "assistant" for m in messages):
                raise BadInput(
                    "messages must be a list of {role, content} with at least one assistant turn", file=where
                )


def use_chat_template(recipe: FinetuneRecipe, tokenizer: Any) -> None:
    """Give the tokenizer the recipe's chat template, or refuse when it has none at all."""
    if recipe.chat_template:
        text = recipe.chat_template
        if text.endswith((".jinja", ".j2")):
            path = recipe.resolve_path(text)
            if not path.is_file():
                raise BadInput(f"chat template file not found: {path}", key="chat_template")
            text = path.read_text(encoding="utf-8")
        tokenizer.chat_template = text
    if not getattr(tokenizer, "chat_template", None):
        raise BadInput(
            "messages rows need a chat template, and this tokenizer has none; set chat_template: "
            "in the recipe (Jinja text or a .jinja file), or use prompt/completion rows",
            key="chat_template",
        )


def encode_sft(rows: Rows, data: SftData, tokenizer: Any, max_length: int, split: str) -> Any:
    """A datasets.Dataset of input_ids and labels (-100 where no loss is taken) for one split,
    cut to `max_length` tokens; rows left with nothing to learn are dropped (and counted)."""
    import datasets

    if not rows.rows:
        return None
    encoded = [_encode_row(row, where, data, tokenizer) for row, where in zip(rows.rows, rows.where)]
    encoded = [(ids[:max_length], labels[:max_length]) for ids, labels in encoded]
    kept = [(ids, labels) for ids, labels in encoded if any(t != -100 for t in labels)]
    if len(kept) < len(encoded):
        say(f"{split}: {len(encoded) - len(kept)} row(s) have no completion within data.max_length; dropped")
    if not kept:
        raise BadInput(
            f"no {split} row has a completion within {max_length} tokens; raise data.max_length",
            key="data.max_length",
        )
    encoded = kept
    return datasets.Dataset.from_dict(
        {"input_ids": [ids for ids, _ in encoded], "labels": [labels for _, labels in encoded]}
    )


def _encode_row(
    row: dict[str, Any], where: str, data: SftData, tokenizer: Any
) -> tuple[list[int], list[int]]:
    eos = [tokenizer.eos_token_id]
    if data.format == "text":
        text = data.template.render(row) if data.template else str(row["text"])
        ids = tokenizer(text)["input_ids"] + eos
        return ids, list(ids)
    if data.format == "prompt_completion":
        prompt = tokenizer(prompt_text(row, data))["input_ids"]
        completion = tokenizer(str(row["completion"]), add_special_tokens=False)["input_ids"] + eos
        return prompt + completion, [-100] * len(prompt) + completion
    return _encode_chat(row["messages"], where, tokenizer)


def prompt_text(row: dict[str, Any], data: SftData) -> str:
    """The prompt of a prompt/completion row (the template's output when there is one)."""
    return data.template.render(row) if data.template else str(row["prompt"])


def _encode_chat(messages: list[dict[str, Any]], where: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Loss on the assistant turns: each turn's span is where the conversation rendered up to
    that turn extends the one rendered up to the turn before (with the generation prompt)."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        end = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (full.startswith(end) and end.startswith(start)):
            raise BadInput(
                "the chat template renders a conversation differently from its prefixes, so the "
                "assistant turns cannot be located; use a template that appends turns",
                file=where,
            )
        spans.append((len(start), len(end)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [
        token if any(a <= lo and hi <= b and hi > lo for a, b in spans) else -100
        for token, (lo, hi) in zip(ids, enc["offset_mapping"])
    ]
    return ids, labels


def _trainer(recipe: FinetuneRecipe, run_dir: RunDir, loaded: LoadedModel, model: Any, encoded: dict) -> Any:
    """SFTTrainer for most methods; the plain Trainer for prefix/prompt tuning (trl issue 4168)."""
    from transformers import Trainer
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    has_validation = encoded["validation"] is not None
    hooks = callbacks(recipe.training, run_dir, has_validation)
    common = dict(
        model=model,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        processing_class=loaded.tokenizer,
        callbacks=hooks,
    )
    arguments = dict(device=loaded.device, seed=recipe.seed, has_validation=has_validation)
    if recipe.method.type in PROMPT_LEARNING:
        args = training_arguments(recipe.training, run_dir.path, **arguments)
        collator = DataCollatorForLanguageModeling(pad_token_id=loaded.tokenizer.pad_token_id)
        trainer = Trainer(args=args, data_collator=collator, **common)
    else:
        sft = {
            "max_length": recipe.data.max_length,
            "packing": recipe.training.packing,
            "dataset_num_proc": None,
        }
        args = training_arguments(recipe.training, run_dir.path, **arguments, extra=sft, args_class=SFTConfig)
        trainer = SFTTrainer(args=args, **common)
    from llmtune.runs.callbacks import keep_stdout_clean

    keep_stdout_clean(trainer)
    return trainer


def evaluate_lm(
    trainer: Any, recipe: FinetuneRecipe, data: SftData, tokenizer: Any, dataset: Any
) -> dict[str, Any]:
    """Loss and perplexity on `dataset`, and exact match of greedy completions of its prompts."""
    loss = trainer.evaluate(dataset, metric_key_prefix="test")["test_loss"]
    out: dict[str, Any] = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "n": len(dataset)}
    if data.format != "text" and "exact_match" in recipe.metric_names():
        out.update(exact_match(trainer.model, recipe, data, tokenizer))
    return out


def _prompt_and_gold(row: dict[str, Any], data: SftData, tokenizer: Any) -> tuple[str, str]:
    if data.format == "prompt_completion":
        return prompt_text(row, data), str(row["completion"])
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
    return prompt, str(messages[last]["content"])


def exact_match(model: Any, recipe: FinetuneRecipe, data: SftData, tokenizer: Any) -> dict[str, Any]:
    """Share of test prompts whose greedy completion equals the gold one (whitespace-trimmed)."""
    import torch

    pairs = [_prompt_and_gold(r, data, tokenizer) for r in data.splits.test.rows]
    chat = data.format == "messages"
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    predictions: list[str] = []
    model.eval()
    try:
        for start in range(0, len(pairs), recipe.training.batch_size):
            prompts = [p for p, _ in pairs[start : start + recipe.training.batch_size]]
            batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            with torch.no_grad():
                generated = model.generate(
                    **batch,
                    max_new_tokens=recipe.evaluation.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = generated[:, batch["input_ids"].shape[1] :]
            predictions += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    hits = [p.strip() == g.strip() for p, (_, g) in zip(predictions, pairs)]
    examples = [{"prompt": p, "gold": g, "prediction": o} for (p, g), o in list(zip(pairs, predictions))[:5]]
    return {"exact_match": sum(hits) / len(hits), "examples": examples}


def _report(recipe: FinetuneRecipe, outcome: Outcome) -> str:
    from llmtune.console import markdown_table

    plan, before, after = outcome.plan, outcome.test_before, outcome.test
    lines = [
        f"# {recipe.name}: finetune (causal_lm, {recipe.method.type})",
        "",
        f"- model: `{plan.model}`",
        f"- data: {plan.details['data_format']} rows {plan.rows}",
        f"- trainable parameters: {plan.trainable_params:,} of {plan.total_params:,} "
        f"({100 * plan.trainable_share:.2f}%)",
        f"- steps: {outcome.steps}, training time: {outcome.train_seconds:.2f} s on {plan.device}",
        "",
    ]
    if after is not None:
        names = [m for m in ("loss", "perplexity", "exact_match") if after.get(m) is not None]
        rows = [[m, before.get(m, "-") if before else "-", after[m]] for m in names]
        lines += ["## Test split", "", markdown_table(["metric", "before training", "after training"], rows)]
        if after.get("examples"):
            lines += ["## Greedy completions (first rows)", ""]
            lines += [
                markdown_table(
                    ["prompt", "gold", "prediction"],
                    [
                        [repr(e["prompt"][-60:]), repr(e["gold"]), repr(e["prediction"])]
                        for e in after["examples"]
                    ],
                )
            ]
    return "\n".join(lines)
