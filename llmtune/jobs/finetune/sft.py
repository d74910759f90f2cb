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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llmtune.console import say, table
from llmtune.data.readers import Rows, Splits, load_splits
from llmtune.data.templates import Template
from llmtune.errors import BadInput
from llmtune.models.loading import LoadedModel, load_model
from llmtune.models.methods import apply_method
from llmtune.recipes.common import Training
from llmtune.recipes.finetune import FinetuneRecipe
from llmtune.runs.lifecycle import Metrics, Outcome, Plan, count_parameters, run_training, warnings_markdown
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

FORMATS = {"messages": ("messages",), "prompt_completion": ("prompt", "completion"), "text": ("text",)}


@dataclass
class SftData:
    """Rows of every split, which of the three row formats they use, and the chat template."""

    splits: Splits
    format: str
    template: Template | None


@dataclass
class SftSplit:
    """One split as TRL's SFTTrainer reads it, and the rows it kept (for exact match)."""

    dataset: Any
    rows: list[dict[str, Any]]


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
        if self.data.format == "messages":
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
        trainable, total = count_parameters(self.model)
        train_rows = len(self.splits["train"].rows)
        self.training = resolve_training(recipe.training, recipe.method.type, recipe.task, train_rows)
        return Plan(
            run_dir=run_dir,
            task=recipe.task,
            method=recipe.method.type,
            model=recipe.model.describe(),
            rows=splits.counts(),
            skipped_rows=splits.skipped(),
            trainable_params=trainable,
            total_params=total,
            planned_steps=planned_steps(self.training, train_rows),
            device=self.loaded.device,
            precision=resolve_precision(recipe.training, self.loaded.device),
            details={
                "data_format": self.data.format,
                "epochs": self.training.epochs,
                "learning_rate": self.training.learning_rate,
            },
        )

    def trainer(self, run_dir: RunDir) -> Any:
        return _trainer(
            self.recipe, self.training, run_dir, self.loaded, self.model, self.splits, self.chat_template
        )

    def evaluate(self, trainer: Any) -> Metrics | None:
        test = self.splits["test"]
        return None if test is None else evaluate_lm(trainer, self.recipe, self.data, self.loaded, test)

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
                raise BadInput(
                    f"chat template file not found: {path}",
                    file=str(recipe.source) if recipe.source else None,
                    key="chat_template",
                )
            text = path.read_text(encoding="utf-8")
        tokenizer.chat_template = text
    if not getattr(tokenizer, "chat_template", None):
        raise BadInput(
            "messages rows need a chat template, and this tokenizer has none; set chat_template: "
            "in the recipe (Jinja text or a .jinja file), or use prompt/completion rows",
            key="chat_template",
        )


def sft_dataset(
    rows: Rows, data: SftData, tokenizer: Any, max_length: int, split: str, chat_template: str | None
) -> SftSplit | None:
    """One split in the columns TRL's SFTTrainer reads: prompt + completion, messages or text
    (conversations TRL cannot mask arrive as input_ids + assistant_masks).

    TRL would drop rows left with nothing to learn after truncation silently; here they are
    dropped before it, counted, and a split with none left is bad input before the run starts.
    `chat_template`: the template TRL masks assistant turns with (None: `assistant_token_mask`).
    """
    import datasets

    if not rows.rows:
        return None
    columns, starts = _columns(rows, data, tokenizer, chat_template)
    kept = [i for i, start in enumerate(starts) if start < max_length]
    learned = {"prompt_completion": "completion", "messages": "assistant turn", "text": "text"}[data.format]
    if len(kept) < len(starts):
        say(f"{split}: {len(starts) - len(kept)} row(s) have no {learned} within data.max_length; dropped")
    if not kept:
        raise BadInput(
            f"no {split} row has a {learned} within {max_length} tokens; raise data.max_length",
            key="data.max_length",
        )
    dataset = datasets.Dataset.from_dict(
        {name: [values[i] for i in kept] for name, values in columns.items()}
    )
    return SftSplit(dataset, [rows.rows[i] for i in kept])


def _columns(
    rows: Rows, data: SftData, tokenizer: Any, chat_template: str | None
) -> tuple[dict[str, list[Any]], list[int]]:
    """The split's columns for TRL, and for each row the position of its first trained token."""
    if data.format == "text":
        texts = [
            data.template.render(r, where=w) if data.template else str(r["text"])
            for r, w in zip(rows.rows, rows.where)
        ]
        return {"text": texts}, [0] * len(texts)
    if data.format == "prompt_completion":
        prompts = [prompt_text(r, data) for r in rows.rows]
        # TRL tokenizes the prompt alone the same way: the completion's tokens start after it
        starts = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
        return {"prompt": prompts, "completion": [str(r["completion"]) for r in rows.rows]}, starts
    conversations = [r["messages"] for r in rows.rows]
    if chat_template is not None:
        # the mask TRL's assistant_only_loss builds, read here only for where the loss starts
        masks = [
            tokenizer.apply_chat_template(
                m,
                chat_template=chat_template,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )["assistant_masks"]
            for m in conversations
        ]
        return {"messages": conversations}, [_first_one(m) for m in masks]
    encoded = [assistant_token_mask(m, where, tokenizer) for m, where in zip(conversations, rows.where)]
    columns = {"input_ids": [ids for ids, _ in encoded], "assistant_masks": [mask for _, mask in encoded]}
    return columns, [_first_one(mask) for _, mask in encoded]


def _first_one(mask: list[int]) -> int:
    return mask.index(1) if 1 in mask else len(mask)


def prompt_text(row: dict[str, Any], data: SftData) -> str:
    """The prompt of a prompt/completion row (the template's output when there is one)."""
    return data.template.render(row) if data.template else str(row["prompt"])


def trl_chat_template(tokenizer: Any) -> str | None:
    """The template TRL's assistant_only_loss masks with: the tokenizer's own when it has
    `{% generation %}` markers, TRL's patched copy for the template families it knows, else None."""
    from trl import get_training_chat_template
    from trl.chat_template_utils import has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return tokenizer.chat_template
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:  # TRL's answer for a template it cannot patch
        return None


def assistant_token_mask(
    messages: list[dict[str, Any]], where: str, tokenizer: Any
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and a 0/1 mask of its assistant turns, for chat templates
    without generation markers: each turn's span is where the conversation rendered up to that
    turn extends the one rendered up to the turn before (with the generation prompt)."""
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
    mask = [int(any(a <= lo and hi <= b and hi > lo for a, b in spans)) for lo, hi in enc["offset_mapping"]]
    return enc["input_ids"], mask


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
        extra=sft,
        args_class=SFTConfig,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"].dataset,
        eval_dataset=validation.dataset if validation else None,
        processing_class=loaded.tokenizer,
        callbacks=callbacks(training, run_dir, has_validation),
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
    if data.format != "text" and "exact_match" in recipe.metric_names():
        out.update(exact_match(replace(loaded, model=trainer.model), recipe, data, split.rows))
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
    from llmtune.inference.engine import Engine

    pairs = [_prompt_and_gold(r, data, loaded.tokenizer) for r in rows]
    # prompts keep their last data.max_length tokens: the longest context the model trained on
    engine = Engine(loaded, batch_size=recipe.training.batch_size, max_length=recipe.data.max_length)
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
        f"- data: {plan.details['data_format']} rows {plan.rows}",
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
