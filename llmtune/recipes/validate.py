"""Turn pydantic's validation errors into one line per problem naming file, line and key."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from llmtune.errors import BadInput, Problem
from llmtune.recipes.loader import RawRecipe


def check_files(paths: list[Path], sets: list[str] | None, *, show: bool, as_json: bool) -> bool:
    """`llmtune validate`: load each recipe; one line per file (errors on stderr), the resolved
    recipe when asked (or for a single file); whether all were valid."""
    import json
    import sys

    import yaml

    from llmtune.recipes import load_recipe

    failed = 0
    for path in paths:
        try:
            recipe = load_recipe(path, sets)
        except BadInput as exc:
            failed += 1
            for line in str(exc).splitlines():
                print(f"error: {line}", file=sys.stderr)
            continue
        dump = recipe.model_dump(mode="json")
        if as_json:
            print(json.dumps({"file": str(path), "recipe": dump}))
        elif show or len(paths) == 1:
            print(f"# {path}: ok ({recipe.kind})")
            print(yaml.safe_dump(dump, sort_keys=False), end="")
        else:
            print(f"{path}: ok ({recipe.kind})")
    if len(paths) > 1 and not as_json:
        print(f"{len(paths) - failed} of {len(paths)} recipes valid", file=sys.stderr)
    return not failed


def problems_from(exc: ValidationError, raw: RawRecipe, model: type[BaseModel]) -> BadInput:
    """One `Problem` per pydantic error, located in the YAML and with a suggestion for typos."""
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"] if not _is_union_tag(p))
        file, line = raw.where(loc)
        key = ".".join(loc) or None
        problems.append(Problem(_message(err, loc, model), file=file, line=line, key=key))
    problems.sort(key=lambda p: (p.file or "", p.line or 0))
    return BadInput(problems=problems)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the union member's type name in the loc ("str", "list[str]", "function-after")
    return isinstance(part, str) and (
        "[" in part or part in {"str", "int", "float", "bool"} or part.startswith("function-")
    )


def _message(err: dict[str, Any], loc: tuple[str, ...], model: type[BaseModel]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _field_names(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key{hint}; expected one of: {', '.join(known)}"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error") and "input" in err:
        shown = repr(err["input"])
        msg += f" (got {shown if len(shown) < 60 else shown[:57] + '...'})"
    return msg


def _field_names(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """The field names of the section at `loc`, following nested models."""
    current: Any = model
    for part in loc:
        sub = _section_type(current, part)
        if sub is None:
            return []
        current = sub
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _section_type(current: Any, part: str) -> Any:
    if isinstance(current, type) and issubclass(current, BaseModel):
        field = current.model_fields.get(part)
        return _unwrap(field.annotation) if field else None
    origin = typing.get_origin(current)
    if origin is dict:  # a dict of sections (e.g. models: {base: {...}})
        return _unwrap(typing.get_args(current)[1])
    return None


def _unwrap(annotation: Any) -> Any:
    """X | None -> X; dict[str, X] stays as is."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _unwrap(args[0]) if len(args) == 1 else annotation
    return annotation
