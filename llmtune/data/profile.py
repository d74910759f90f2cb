"""`llmtune init KIND FILE --from DATA`: read a data file and guess what a starter recipe needs:
the text, label and id columns (and why each was picked), the labels with their counts, the task
(classification; regression when every label is a number with many values; causal_lm SFT for
prompt/completion or messages rows), and warnings about classes too small to learn or measure."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.data.formats import iter_file
from llmtune.errors import BadInput

ROWS_READ = 20_000  # enough to see every label of a real file, quick on a large one
TEXT_NAMES = ("text", "review", "body", "sentence", "content", "message", "comment", "description", "title")
LABEL_NAMES = ("label", "labels", "category", "class", "sentiment", "target", "intent", "topic", "y")
NUMBER_NAMES = ("score", "rating", "stars", "value")
PROMPT_NAMES = ("prompt", "instruction", "question", "input", "query")
COMPLETION_NAMES = ("completion", "response", "answer", "output", "reply")
MAX_CLASSES = 50  # more distinct values than this is not a label column
REGRESSION_VALUES = 10  # numeric labels with more distinct values than this: regression
TINY_CLASS = 10  # a class with fewer rows is hard to learn and cannot be measured


@dataclass
class DataProfile:
    """What a data file says about the recipe that reads it."""

    rows: int
    columns: list[str]
    task: str = "classification"
    mapping: dict[str, str] = field(default_factory=dict)
    """canonical field -> the file's column (data.columns)."""
    labels: dict[str, int] = field(default_factory=dict)
    """classification: label -> rows, most frequent first."""
    reasons: list[str] = field(default_factory=list)
    """One line per choice made, said to the user."""
    warnings: list[str] = field(default_factory=list)


def profile_file(path: Path) -> DataProfile:
    """Read up to ROWS_READ rows of `path` and guess its columns, labels and task; BadInput when
    it holds no rows or no column of text."""
    rows = [row for _, row, problem in itertools.islice(iter_file(path), ROWS_READ) if problem is None]
    rows = [row for row in rows if isinstance(row, dict)]
    if not rows:
        raise BadInput("no readable rows of named columns (a header line, or JSON objects)", file=str(path))
    columns = list(dict.fromkeys(str(k) for row in rows for k in row))
    profile = DataProfile(rows=len(rows), columns=columns)
    values = {c: [row.get(c) for row in rows if row.get(c) not in (None, "")] for c in columns}
    if _sft(profile, values):
        return profile
    _pick_id(profile, values)
    label = _pick_label(profile, values)
    _pick_text(profile, values, exclude={label, profile.mapping.get("id")})
    if label is not None:
        _label_task(profile, values[label])
    return profile


def _named(columns: list[str], names: tuple[str, ...]) -> str | None:
    lowered = {c.lower(): c for c in columns}
    return next((lowered[n] for n in names if n in lowered), None)


def _sft(profile: DataProfile, values: dict[str, list[Any]]) -> bool:
    columns = profile.columns
    if "messages" in columns and all(isinstance(v, list) for v in values["messages"]):
        profile.task = "causal_lm"
        profile.reasons.append("column 'messages' holds chat turns: supervised fine-tuning (task: causal_lm)")
        return True
    prompt, completion = _named(columns, PROMPT_NAMES), _named(columns, COMPLETION_NAMES)
    if prompt and completion:
        profile.task = "causal_lm"
        profile.mapping = {"prompt": prompt, "completion": completion}
        profile.reasons.append(
            f"columns {prompt!r} and {completion!r} are a prompt and its completion: supervised "
            "fine-tuning of a language model (task: causal_lm)"
        )
        return True
    return False


def _pick_id(profile: DataProfile, values: dict[str, list[Any]]) -> None:
    for column in profile.columns:
        name = column.lower()
        unique = len(set(map(str, values[column]))) == profile.rows
        if unique and (name == "id" or name.endswith("_id") or column.endswith("Id")):
            profile.mapping["id"] = column
            profile.reasons.append(
                f"id: {column!r} (named like an id, one value per row): kept in predictions"
            )
            return


def _pick_label(profile: DataProfile, values: dict[str, list[Any]]) -> str | None:
    named = _named(profile.columns, LABEL_NAMES) or _named(profile.columns, NUMBER_NAMES)
    if named is not None and values[named]:
        profile.mapping["label"] = named
        profile.reasons.append(f"label: {named!r} (its name)")
        return named
    candidates = [
        c
        for c in profile.columns
        if c != profile.mapping.get("id")
        and c.lower() not in TEXT_NAMES
        and 2 <= len(set(map(str, values[c]))) <= min(MAX_CLASSES, len(values[c]) - 1)
    ]  # a class column repeats values: one value per row is text or an id, not labels
    if not candidates:
        profile.warnings.append(
            "no column looks like a label (2 to 50 distinct values): set data.columns.label by hand"
        )
        return None
    chosen = min(candidates, key=lambda c: len(set(map(str, values[c]))))
    distinct = len(set(map(str, values[chosen])))
    profile.mapping["label"] = chosen
    profile.reasons.append(f"label: {chosen!r} (the column with fewest distinct values: {distinct})")
    return chosen


def _pick_text(profile: DataProfile, values: dict[str, list[Any]], exclude: set[str | None]) -> None:
    texts = [
        c
        for c in profile.columns
        if c not in exclude and values[c] and all(isinstance(v, str) for v in values[c])
    ]
    named = _named(texts, TEXT_NAMES)
    if named is not None:
        profile.mapping["text"] = named
        profile.reasons.append(f"text: {named!r} (its name)")
        return
    if not texts:
        raise BadInput(
            f"no column of text to learn from; the columns are: {', '.join(profile.columns)}",
            key="--from",
        )
    chosen = max(texts, key=lambda c: sum(len(v) for v in values[c]) / len(values[c]))
    mean = sum(len(v) for v in values[chosen]) / len(values[chosen])
    profile.mapping["text"] = chosen
    profile.reasons.append(f"text: {chosen!r} (the longest text: {mean:.0f} characters on average)")


def _label_task(profile: DataProfile, labels: list[Any]) -> None:
    numbers = [_number(v) for v in labels]
    distinct = sorted(set(map(str, labels)))
    if all(n is not None for n in numbers) and (
        len(distinct) > REGRESSION_VALUES or any(n != int(n) for n in numbers if n is not None)
    ):
        profile.task = "regression"
        low, high = min(numbers), max(numbers)  # type: ignore[type-var]
        profile.reasons.append(
            f"task: regression (every label is a number; {len(distinct)} distinct values from {low:g} to {high:g})"
        )
        return
    counts: dict[str, int] = {}
    for value in labels:
        counts[str(value)] = counts.get(str(value), 0) + 1
    profile.labels = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    numeric = " (numbers with few values: set task: regression if their order matters)"
    shown = numeric if all(n is not None for n in numbers) else ""
    profile.reasons.append(f"task: classification ({len(counts)} labels){shown}")
    tiny = {k: n for k, n in profile.labels.items() if n < TINY_CLASS}
    if tiny:
        shown = ", ".join(f"{k!r} ({n} rows)" for k, n in tiny.items())
        profile.warnings.append(
            f"tiny classes: {shown}; under {TINY_CLASS} rows a class is hard to learn and its test "
            "score means little: collect more rows, or merge it into a near class"
        )


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None
