"""`llmtune init KIND FILE --from DATA`: the starter's example values fitted to a data file (its
path as the recipe will name it, its columns, labels and task, a split that leaves enough
validation rows to choose a checkpoint), and the lines that tell the user what was chosen."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from llmtune.data.profile import DataProfile, profile_file
from llmtune.errors import BadInput
from llmtune.recipes.common import MIN_VALIDATION_ROWS
from llmtune.recipes.starter import EXAMPLES

FROM_KINDS = ("finetune", "prompt-eval", "bulk-infer")
SFT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
HELD_OUT = 0.1  # validation share carved when it leaves MIN_VALIDATION_ROWS rows
TEST_SHARE = 0.2


def example_from_data(kind: str, data: Path, recipe: Path | None) -> tuple[dict[str, Any], list[str]]:
    """(the example values for `kind` fitted to `data`, lines saying what was picked and why).
    `recipe` is where the starter goes (None: stdout), so that the data path is written relative
    to it, as recipes resolve it."""
    if kind not in FROM_KINDS:
        raise BadInput(f"--from reads data for {', '.join(FROM_KINDS)} starters, not {kind}", key="--from")
    if not data.is_file():
        raise BadInput(f"data file not found: {data}", key="--from")
    profile = profile_file(data)
    folder = (recipe.parent if recipe is not None else Path.cwd()).resolve()
    path = os.path.relpath(data.resolve(), folder)
    example = copy.deepcopy(EXAMPLES[kind])
    if kind == "finetune":
        _finetune(example, profile, path)
    elif kind == "prompt-eval":
        if profile.task != "classification" or not profile.labels:
            raise BadInput(
                "prompt-eval compares prompts on labelled rows; no label column found", key="--from"
            )
        example["data"] = {"test": path, "columns": _columns(profile)}
        example["labels"] = sorted(profile.labels)
        # few-shot prompts draw their examples from data.train: another file than the test rows
        example["prompts"] = {"zero_shot": {"template": "Text: {{ text }}\nLabel:"}}
        profile.reasons.append(
            "prompts: zero-shot only; for few-shot prompts add data.train (rows other than the test "
            "rows) and a prompt with shots (`llmtune init prompt-eval` shows one)"
        )
    else:
        text = profile.mapping.get("text") or profile.mapping.get("prompt")
        example["input"] = {"path": path, "id_column": profile.mapping.get("id"), "columns": {"text": text}}
        if profile.labels:
            example["labels"] = sorted(profile.labels)
        # rows to label need no label column: the labels are the model's (edit `labels` to them)
        profile.warnings = [w for w in profile.warnings if not w.startswith("no column looks like a label")]
    return example, _said(profile, data)


ORDER = ("id", "text", "label", "prompt", "completion")


def _columns(profile: DataProfile) -> dict[str, str]:
    return {k: profile.mapping[k] for k in ORDER if k in profile.mapping}


def _finetune(example: dict[str, Any], profile: DataProfile, path: str) -> None:
    example["task"] = profile.task
    example.pop("labels", None)
    if profile.task == "classification" and profile.labels:
        example["labels"] = sorted(profile.labels)  # the order llmtune infers them in
    if profile.task == "causal_lm":
        example["model"] = {"path": SFT_MODEL}
    validation = HELD_OUT if profile.rows * HELD_OUT >= MIN_VALIDATION_ROWS else 0.0
    split: dict[str, Any] = {"test": TEST_SHARE, "seed": 42}
    if validation:
        split = {"validation": validation, **split}
    example["data"] = {"train": path, "split": split, "columns": _columns(profile)}
    training = dict(example.get("training", {}))
    training.pop("early_stopping", None)
    example["training"] = training
    profile.reasons.append(_split_reason(profile.rows, validation))
    if profile.task == "causal_lm":
        profile.reasons.append(
            f"model: {SFT_MODEL} (a small instruct model: downloaded once, then read from the cache); "
            "offline, name a causal LM that `llmtune env` lists as cached"
        )


def _split_reason(rows: int, validation: float) -> str:
    test = round(rows * TEST_SHARE)
    if validation:
        return (
            f"split: {rows} rows -> {int(rows * validation)} validation (to choose the best checkpoint), "
            f"{test} test, the rest train"
        )
    return (
        f"split: {rows} rows -> {test} test, the rest train; no validation split: 10% would be under "
        f"{MIN_VALIDATION_ROWS} rows, too few to choose a checkpoint on, so the last step's model is kept"
    )


def _said(profile: DataProfile, data: Path) -> list[str]:
    lines = [f"{data}: {profile.rows} rows, columns: {', '.join(profile.columns)}"]
    lines += [f"  {reason}" for reason in profile.reasons]
    if profile.labels:
        lines.append("  labels: " + ", ".join(f"{k} ({n})" for k, n in profile.labels.items()))
    lines += [f"  warning: {w}" for w in profile.warnings]
    return lines


def write_starter(
    kind: str, path: Path | None, *, stage: str | None = None, full: bool = False, data: Path | None = None
) -> None:
    """`llmtune init`: the starter on stdout, or written to `path` (never over an existing file)
    with the kind's JSON Schema next to it (which the starter's first line names, for editors);
    with `data`, fitted to that file, and what was picked said on stderr."""
    import json
    import sys

    from llmtune.recipes import json_schema
    from llmtune.recipes.starter import schema_file, starter_for

    example, said = example_from_data(kind, data, path) if data is not None else (None, [])
    text = starter_for(kind, stage, full=full, example=example)
    if path is not None and path.exists():
        raise BadInput(f"{path} already exists; not overwriting it")
    for line in said:
        print(line, file=sys.stderr)
    if path is None:
        print(text, end="")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as f:  # O_EXCL: never an existing file, nor a link
            f.write(text)
    except FileExistsError:
        raise BadInput(f"{path} already exists (or is a link); not overwriting it") from None
    print(f"wrote {path}", file=sys.stderr)
    schema = path.parent / schema_file(kind)
    if not schema.exists() and not schema.is_symlink():
        with schema.open("x", encoding="utf-8") as f:
            f.write(json.dumps(json_schema(kind), indent=2) + "\n")
        print(f"wrote {schema} (`llmtune schema {kind}`, for editors' completion)", file=sys.stderr)
