"""The rows the parity gate runs on, in this order: `--verify-data FILE`; a head run's
predictions.jsonl (its test split, as the model saw it, with the run's own predictions); the
run's test split read through its recipe; a sample of its training data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput
from llmtune.export.parity import Rows

SAMPLE = 64  # training rows, when a run has no test split
PROMPTS = 16  # prompts whose greedy continuations are compared
BUILT_IN = [
    "The package arrived two days late and the box was crushed.",
    "Great service, friendly staff, and the room was spotless.",
    "I am not sure whether this is worth the price.",
    "Question: How do I reset my password?\nAnswer:",
    "The meeting moved to Thursday at ten in the small room.",
    "Terrible. It stopped working after a week and nobody answered my emails.",
    "Honestly the best purchase I made this year!",
    "It does what it says, nothing more, nothing less.",
    "Can I change my delivery address after ordering?",
    "The soup was cold but the bread was lovely.",
    "Instructions were unclear; setup took an hour.",
    "Five stars, would order again.",
    "Once upon a time, in a small village by the sea,",
    "def add(a, b):\n    return",
    "Paris is the capital of",
    "Thanks for the quick reply, that fixed it.",
]


def verify_rows(run: Path | None, verify_data: Path | None, head: str) -> Rows:
    """The gate's rows for a `head` ("classification", "regression", "causal_lm") model."""
    if verify_data is not None:
        return _from_file(verify_data, head)
    if run is not None and head != "causal_lm" and (run / "predictions.jsonl").is_file():
        records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines() if line]
        return Rows(
            "the run's test split (predictions.jsonl)",
            [str(r["text"]) for r in records],
            gold=[r.get("gold") for r in records] if all("gold" in r for r in records) else None,
            run_predictions=[r["prediction"] for r in records] if head == "classification" else None,
        )
    recipe = _run_recipe(run) if run is not None else None
    if recipe is None:  # a bare model folder: no data of its own
        source = f"{len(BUILT_IN)} built-in sentences (a model folder, not a run: --verify-data FILE checks on yours)"
        return Rows(source, BUILT_IN[:PROMPTS], references=BUILT_IN)
    return _lm_rows(recipe) if head == "causal_lm" else _head_rows(recipe)


def _head_rows(recipe: Any) -> Rows:
    """A head run without predictions.jsonl: its test split, else a sample of its training data,
    through its columns and template."""
    from llmtune.data.splits import load_splits

    splits = load_splits(recipe, recipe.data)
    split, what = (splits.test, "test split") if len(splits.test.rows) else (splits.train, "training data")
    rows = split.rows if what == "test split" else split.rows[:SAMPLE]
    gold = [r.get("label") for r in rows]
    known = None if any(g is None for g in gold) else gold
    return Rows(f"the run's {what} ({len(rows)} rows)", [str(r["text"]) for r in rows], gold=known)


def _from_file(path: Path, head: str) -> Rows:
    texts, gold, references = [], [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadInput(f"cannot read it ({exc.strerror})", file=str(path)) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise BadInput("not a JSON object", file=str(path), line=number) from None
        field = "prompt" if head == "causal_lm" and isinstance(row, dict) and "prompt" in row else "text"
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise BadInput(f"each row needs a string {field!r}", file=str(path), line=number)
        texts.append(row[field])
        gold.append(row.get("label"))
        references.append(row[field] + str(row.get("completion", "")))
    if not texts:
        raise BadInput("holds no rows", file=str(path))
    if head == "causal_lm":
        return Rows(f"{path.name} ({len(texts)} rows)", texts[:PROMPTS], references=references[:SAMPLE])
    known = None if any(g is None for g in gold) else gold
    return Rows(f"{path.name} ({len(texts)} rows)", texts, gold=known)


def _run_recipe(run: Path) -> Any | None:
    """The run's recipe, its relative paths resolving against the original recipe's folder."""
    from llmtune.recipes import load_recipe

    manifest_path, recipe_path = run / "manifest.json", run / "recipe.yaml"
    if not (manifest_path.is_file() and recipe_path.is_file()):
        return None
    manifest = json.loads(manifest_path.read_text())
    recipe = load_recipe(recipe_path)
    if manifest.get("recipe_file"):
        recipe.attach_source(Path(manifest["recipe_file"]))
    return recipe


def _lm_rows(recipe: Any) -> Rows:
    """Prompts and prompt+answer texts of the run's test split (else its training data), read as
    the run read them: prompt/completion rows (through data.template when there is one),
    conversations (the turns before the last answer, as plain text) or plain text."""
    from llmtune.data.splits import load_splits
    from llmtune.data.templates import Template

    splits = load_splits(recipe, recipe.data, render_into=None)
    template = Template(recipe.data.template, where="data.template") if recipe.data.template else None
    split, what = splits.test, "test split"
    if not len(split.rows):
        split, what = splits.train, "training data"
    rows = split.rows[:SAMPLE]
    prompts, references = [], []
    for row in rows:
        if isinstance(row.get("messages"), list):
            prompt = "\n".join(str(m.get("content", "")) for m in row["messages"][:-1])
            answer = str(row["messages"][-1].get("content", "")) if row["messages"] else ""
        elif "completion" in row:
            prompt, answer = (
                template.render(row) if template else str(row.get("prompt", "")),
                str(row["completion"]),
            )
        else:
            prompt, answer = "", template.render(row) if template else str(row.get("text", ""))
        if prompt:
            prompts.append(prompt)
        references.append(prompt + answer)
    if not prompts:  # plain text rows: continue their first words
        prompts = [" ".join(r.split()[:8]) for r in references]
    return Rows(f"the run's {what} ({len(rows)} rows)", prompts[:PROMPTS], references=references)
