"""A label read as a number, for the tasks whose label is a score (finetune and distill with
`task: regression`): one rule, so that a row one job accepts the other accepts too."""

from __future__ import annotations

import math
from typing import Any


def numeric_label(row: dict[str, Any], field: str = "label") -> float:
    """A row's label as a number: a JSON number, or text that reads as one (CSV cells are text).
    Raises ValueError for anything else, NaN and infinity included."""
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number
