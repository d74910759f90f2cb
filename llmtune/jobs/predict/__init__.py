"""`llmtune predict MODEL [TEXT ...]`: try a model on a few texts, for people and pipes.

MODEL is a run directory, an export, a local model folder or a hub id (`inference.source`). A
run's own input format applies: its data.template, its columns (for --input files), its max
length, its generation length and, for a run trained on conversations, the chat template. Per
text it prints the label and the top probabilities (classifier), the score (regression head) or
the generation (causal LM); --json prints one object per line with the same keys as
bulk-infer's output rows. Texts come from the arguments, else from --input, else from stdin
(one per line; blank lines are skipped). It writes nothing.

    llmtune predict runs/sentiment "the food was cold"
    cat reviews.txt | llmtune predict runs/sentiment --json
    llmtune predict runs/sentiment --input reviews.csv --column review
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.console import safe_text
from llmtune.data.readers import map_columns, read_file
from llmtune.data.templates import Template, template_of
from llmtune.errors import BadInput
from llmtune.inference.source import Source, find_source, open_engine

CHUNK = 256  # texts from a pipe run in chunks of this many (a terminal: one line at a time)
TOP = 3  # probabilities shown per text (all of them with --json)


@dataclass
class Settings:
    """predict's options."""

    model: str
    texts: list[str]
    input: Path | None = None
    column: str | None = None
    json: bool = False
    engine: str = "hf"
    max_new_tokens: int | None = None
    temperature: float = 0.0
    seed: int | None = None
    debug: bool = False


def run(settings: Settings) -> None:
    """Print a prediction per text (see the module docstring)."""
    from llmtune.models.loading import quiet_libraries

    source = find_source(settings.model)
    if settings.max_new_tokens is not None and settings.max_new_tokens < 1:
        raise BadInput(f"expected a positive number, got {settings.max_new_tokens}", key="--max-new-tokens")
    if settings.temperature < 0:
        raise BadInput(
            f"expected a temperature of 0 or more, got {settings.temperature}", key="--temperature"
        )
    template = template_of(source.template)
    rows = _rows(settings, source)
    first = next(rows, None)
    if first is None:
        return  # nothing to predict: no model is loaded
    if template is not None:  # a field the texts do not give is refused before the model loads
        template.check_fields(set(first[0]), file=first[1] if settings.input else None)
    quiet_libraries(settings.debug)
    engine = open_engine(source, settings.engine, max_new_tokens=settings.max_new_tokens)
    chat = source.chat if source.chat is not None else bool(getattr(engine.tokenizer, "chat_template", None))
    for chunk in _chunks(_prepend(first, rows), 1 if _interactive(settings) else CHUNK):
        prompts = [_prompt(row, where, template, engine, chat) for row, where in chunk]
        for (row, _), result in zip(chunk, predict(engine, source, settings, prompts)):
            out = {"text": row["text"], **({"id": row["id"]} if "id" in row else {}), **result}
            print(json.dumps(out, ensure_ascii=False) if settings.json else _plain(result), flush=True)


def predict(engine: Any, source: Source, settings: Settings, prompts: list[str]) -> list[dict[str, Any]]:
    """The results for `prompts`, keyed as bulk-infer's output rows (label + scores, score, output)."""
    if engine.regression:
        return [{"score": s} for s in engine.score(prompts)]
    if engine.classifier:
        labels = engine.head_labels()
        return [{"label": max(s, key=s.__getitem__), "scores": s} for s in engine.classify(prompts, labels)]
    generations = engine.generate(
        prompts,
        max_new_tokens=settings.max_new_tokens or source.max_new_tokens,
        temperature=settings.temperature,
        seed=source.seed if settings.seed is None else settings.seed,
    )
    return [{"output": g.texts[0]} for g in generations]


def _rows(settings: Settings, source: Source) -> Iterator[tuple[dict[str, Any], str]]:
    """(row, where) per text: from the arguments, --input or stdin."""
    if settings.texts and settings.input is not None:
        raise BadInput("give texts as arguments or --input FILE, not both", key="--input")
    if settings.column and settings.input is None:
        raise BadInput("--column names a column of the --input file; give --input FILE", key="--column")
    if settings.texts:
        return ((_fields(t), f"argument {i + 1}") for i, t in enumerate(settings.texts) if t.strip())
    if settings.input is not None:
        return iter(_file_rows(settings.input, settings.column, source.columns))
    return _stdin_rows()


def _file_rows(path: Path, column: str | None, columns: dict[str, str]) -> list[tuple[dict[str, Any], str]]:
    if not path.is_file():
        raise BadInput(f"no such file: {path}", key="--input")
    part = read_file(path, skip_bad_rows=False)
    out = []
    for raw, where in zip(part.rows, part.where):
        row = map_columns(raw, columns)
        name = column or "text"
        if name not in (raw if column else row):
            seen = ", ".join(sorted(raw)) or "none"
            raise BadInput(f"no column {name!r} (columns: {seen}); name one with --column", file=where)
        value = raw[column] if column else row["text"]
        if value is None or not str(value).strip():
            continue
        out.append(({**row, **_fields(str(value))}, where))
    return out


def _stdin_rows() -> Iterator[tuple[dict[str, Any], str]]:
    if sys.stdin.isatty():
        print("reading texts from the terminal, one per line; Ctrl-D ends", file=sys.stderr)
    for n, line in enumerate(sys.stdin, 1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield _fields(text), f"stdin:{n}"


def _fields(text: str) -> dict[str, Any]:
    """A text as the fields a run's template may read: text, and prompt for causal LM runs."""
    return {"text": text, "prompt": text}


def _prompt(row: dict[str, Any], where: str, template: Template | None, engine: Any, chat: bool) -> str:
    prompt = template.render(row, where=where) if template else str(row["text"])
    return engine.apply_chat_template(prompt) if chat and not engine.classifier else prompt


def _plain(result: dict[str, Any]) -> str:
    if "score" in result:
        return f"{result['score']:.4g}"
    if "label" in result:
        top = sorted(result["scores"].items(), key=lambda kv: -kv[1])[:TOP]
        return safe_text(result["label"]) + "\t" + "  ".join(f"{safe_text(k)} {v:.3f}" for k, v in top)
    return safe_text(result["output"])


def _interactive(settings: Settings) -> bool:
    return not settings.texts and settings.input is None and sys.stdin.isatty()


def _prepend(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
