"""Assertions on generated text: each recipe assertion is data (a type and a value), turned into a
check here; a recipe can never run code.

regex uses RE2 (google-re2): matching takes time linear in the output, so a pattern written by
anyone cannot hang a run (RE2 refuses look-around and back-references at validation instead).
Every check reads the whole output as generated, except one_of, which strips it first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from llmtune.recipes.prompt_eval_checks import Assertion

Check = Callable[[str], bool]


def build_check(assertion: Assertion) -> Check:
    """The assertion as a function of one output: True when the output passes."""
    kind, value = assertion.type, assertion.value
    fold = (lambda s: s.casefold()) if assertion.ignore_case else (lambda s: s)
    if kind == "contains":
        return lambda out: fold(str(value)) in fold(out)
    if kind == "not_contains":
        return lambda out: fold(str(value)) not in fold(out)
    if kind == "regex":
        import re2

        compiled = re2.compile(str(value))
        return lambda out: compiled.search(out) is not None
    if kind == "is_json":
        return lambda out: _parse_json(out) is not _NOT_JSON
    if kind == "json_schema":
        import jsonschema

        validator = jsonschema.validators.validator_for(value)(value)
        return lambda out: (doc := _parse_json(out)) is not _NOT_JSON and validator.is_valid(doc)
    if kind == "max_length":
        return lambda out: len(out) <= int(value)  # type: ignore[arg-type]
    if kind == "min_length":
        return lambda out: len(out) >= int(value)  # type: ignore[arg-type]
    allowed = {fold(v) for v in value}  # type: ignore[union-attr]  # one_of
    return lambda out: fold(out.strip()) in allowed


_NOT_JSON = object()


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # json.JSONDecodeError, and a number too long to convert
        return _NOT_JSON


def run_assertions(assertions: list[Assertion], outputs: list[str]) -> dict[str, list[bool]]:
    """Per assertion name, whether each output passes it (in the order of the outputs)."""
    return {a.label: [check(o) for o in outputs] for a, check in ((a, build_check(a)) for a in assertions)}
