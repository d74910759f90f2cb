"""What a regression head is (one output that predicts a number) and how its outputs map to the
label's own units: the rule every job shares (finetune trains it, bulk-infer scores with it).

A head trained with `label_range: [low, high]` learns the label scaled to 0..1 (steadier than
raw prices or ratings); config.json records the range under `label_range` so that llmtune
scales its outputs back wherever the model is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune.errors import BadInput

LABEL_RANGE = "label_range"
"""The config.json key where a regression head trained with `label_range` records it."""


def is_regression(config: dict[str, Any]) -> bool:
    """The one rule for a regression head (a config.json as a dict): problem_type regression, or
    a head with a single output (what transformers itself treats as regression)."""
    outputs = config.get("num_labels") or len(config.get("id2label") or {})
    return config.get("problem_type") == "regression" or outputs == 1


def label_range_of(config: dict[str, Any], file: Path | None = None) -> tuple[float, float] | None:
    """The [low, high] a regression head was trained on (its outputs are 0..1 of it), or None."""
    value = config.get(LABEL_RANGE)
    if value is None:
        return None
    numbers = isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    )
    if not numbers or len(value) != 2 or value[0] >= value[1]:
        raise BadInput(
            f"{LABEL_RANGE} must be [low, high] with low < high, got {value!r}",
            file=str(file) if file else None,
        )
    return float(value[0]), float(value[1])


def to_unit(value: float, label_range: tuple[float, float] | None) -> float:
    """A label as the head learns it: scaled to 0..1 of `label_range` (unchanged without one)."""
    if label_range is None:
        return value
    low, high = label_range
    return (value - low) / (high - low)


def from_unit(value: float, label_range: tuple[float, float] | None) -> float:
    """A head's output in the label's own units (the inverse of `to_unit`)."""
    if label_range is None:
        return value
    low, high = label_range
    return low + value * (high - low)
