"""Turn pydantic's validation errors into one line per problem naming file, line and key."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from llmtune.errors import BadInput, Problem
from llmtune.recipes.annotations import unwrap_optional
from llmtune.recipes.loader import RawRecipe


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
        return unwrap_optional(field.annotation) if field else None
    origin = typing.get_origin(current)
    if origin is dict:  # a dict of sections (e.g. models: {base: {...}})
        return unwrap_optional(typing.get_args(current)[1])
    return None
