"""SFT's data: which of the three row formats a data set uses, the rows checked, the chat
template, and each split as TRL's SFTTrainer takes it — with the one step TRL cannot do for
chat templates without `{% generation %}` markers (`assistant_token_mask`), and rows with nothing
to learn within data.max_length dropped and counted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmtune.console import say
from llmtune.data.mixture import SOURCE, templates
from llmtune.data.mixture import is_composite as _composite
from llmtune.data.readers import Rows, Splits
from llmtune.data.splits import load_splits
from llmtune.data.templates import Template, template_of
from llmtune.errors import BadInput
from llmtune.recipes.finetune import FinetuneRecipe

FORMATS = {"messages": ("messages",), "prompt_completion": ("prompt", "completion"), "text": ("text",)}


@dataclass
class SftData:
    """Rows of every split, which of the three row formats they use, and the template(s)."""

    splits: Splits
    format: str
    template: Template | None
    by_source: dict[str, Template | None] = field(default_factory=dict)
    """Mixtures and replay: each source's template (its own, else data.template)."""
    formats: dict[Any, str] = field(default_factory=dict)
    """Source name (None: rows of no source) -> the format of its rows."""
    retain_format: str | None = None
    """evaluation.retain: the format of the general rows (their own; no template)."""

    def format_of(self, row: dict[str, Any]) -> str:
        """The row's own format (a text row in a prompt/completion run stays text)."""
        return self.formats.get(row.get(SOURCE), self.format)

    def template_for(self, row: dict[str, Any]) -> Template | None:
        """The template of the row's source; data.template for rows of no source."""
        return self.by_source.get(row[SOURCE], self.template) if SOURCE in row else self.template


@dataclass
class SftSplit:
    """One split as TRL's SFTTrainer reads it, and the rows it kept (for exact match)."""

    dataset: Any
    rows: list[dict[str, Any]]


def setup_sft_data(recipe: FinetuneRecipe) -> SftData:
    """Read the rows (each source of a mixture with its own columns and template), decide each
    source's format from its first row, check that every row has it.

    Sources may mix text and prompt/completion rows (e.g. general text replayed into a
    prompt/completion task): the run then trains on prompt/completion, a text row being a
    completion with an empty prompt, so its every token is learnt as in plain language modelling."""
    # templates apply per source here
    splits = load_splits(recipe, recipe.data, render_into=None, retain=recipe.evaluation.retain)
    template = template_of(recipe.data.template)
    data = SftData(splits, "text", template)
    if _composite(recipe.data):
        data.by_source = {
            name: Template(text, where=f"template of source {name!r}") if text else None
            for name, text in templates(recipe.data).items()
        }
    first: dict[Any, tuple[dict[str, Any], str]] = {}  # source -> its first row and where
    for name in ("train", "validation", "test"):
        rows = getattr(splits, name)
        for row, where in zip(rows.rows, rows.where):
            first.setdefault(row.get(SOURCE), (row, where))
    for source, (row, where) in first.items():
        row_template = data.template_for(row)
        data.formats[source] = row_format(row, row_template is not None, where)
        if row_template is not None:
            row_template.check_fields(set(row), file=where.rsplit(":", 1)[0])
    data.format = _run_format(data.formats, first)
    for name in ("train", "validation", "test"):
        rows = getattr(splits, name)
        for row, where in zip(rows.rows, rows.where):
            fmt = data.format_of(row)
            _check_row(row, where, FORMATS[fmt][1:] if data.template_for(row) else FORMATS[fmt], fmt)
    if splits.retain.rows:
        retain = splits.retain
        data.retain_format = row_format(retain.rows[0], False, retain.where[0])
        for row, where in zip(retain.rows, retain.where):
            _check_row(row, where, FORMATS[data.retain_format], data.retain_format)
    return data


def _run_format(formats: dict[Any, str], first: dict[Any, tuple[dict[str, Any], str]]) -> str:
    """The format the run trains on: the sources' own, or prompt/completion for a mix of
    prompt/completion and text; conversations do not mix with the others."""
    found = set(formats.values())
    if len(found) == 1:
        return found.pop()
    if "messages" in found:
        odd = next(s for s, f in formats.items() if f != "messages")
        raise BadInput(
            f"messages rows cannot be mixed with {formats[odd]} rows in one run (source {odd!r}); "
            "give every source the same format, e.g. with its own columns or template",
            file=first[odd][1],
        )
    return "prompt_completion"


def row_format(row: dict[str, Any], templated: bool, where: str) -> str:
    """messages, prompt_completion or text, from a row's fields (and whether a template makes its
    prompt or text)."""
    if "messages" in row:
        return "messages"
    if "completion" in row and ("prompt" in row or templated):
        return "prompt_completion"
    if "text" in row or templated:
        return "text"
    raise BadInput(
        f"causal_lm rows need messages, prompt + completion, or text (or data.template); "
        f"the first row has {', '.join(sorted(k for k in row if k != SOURCE))}",
        file=where,
    )


def _check_row(row: dict[str, Any], where: str, needed: tuple[str, ...], fmt: str) -> None:
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
            template.render(r, where=w) if (template := data.template_for(r)) else str(r["text"])
            for r, w in zip(rows.rows, rows.where)
        ]
        return {"text": texts}, [0] * len(texts)
    if data.format == "prompt_completion":
        prompts = [prompt_text(r, data) for r in rows.rows]
        completions = [_completion(r, w, data) for r, w in zip(rows.rows, rows.where)]
        # TRL tokenizes the prompt alone the same way: the completion's tokens start after it
        starts = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
        return {"prompt": prompts, "completion": completions}, starts
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
    """The prompt of a prompt/completion row (its template's output when it has one); empty for a
    text row, whose whole text is the completion."""
    if data.format_of(row) == "text":
        return ""
    template = data.template_for(row)
    return template.render(row) if template else str(row["prompt"])


def _completion(row: dict[str, Any], where: str, data: SftData) -> str:
    if data.format_of(row) != "text":
        return str(row["completion"])
    template = data.template_for(row)
    return template.render(row, where=where) if template else str(row["text"])


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
