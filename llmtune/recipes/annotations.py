"""Reading the recipe schema's type annotations: what the section behind an optional field is."""

from __future__ import annotations

import types
import typing
from typing import Any


def unwrap_optional(annotation: Any) -> Any:
    """X | None -> X; dict[str, X] and unions of several types stay as they are."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return unwrap_optional(args[0]) if len(args) == 1 else annotation
    return annotation
