"""KTO's unpaired rows as its trainer reads them: the class weights that keep good and bad within
the KTO paper's range, and one seeded order that mixes them."""

from __future__ import annotations

import math
import random
from typing import Any

KTO_RANGE = (1.0, 4 / 3)  # KTO paper eq. 8: desirable_weight * good / (undesirable_weight * bad)


def kto_weights(good: int, bad: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight): TRL's defaults when good/bad lies in the KTO
    paper's range [1, 4/3], else the minority's weight raised until it does."""
    low, high = KTO_RANGE
    if low <= good / bad <= high:
        return 1.0, 1.0
    if good < bad:
        return math.ceil(100 * bad / good) / 100, 1.0
    return 1.0, math.floor(100 * good / bad) / 100


def shuffled(columns: dict[str, list[Any]], seed: int) -> dict[str, list[Any]]:
    """KTO reads its rows in order (its KL term pairs neighbours): mix rankings' good and bad rows
    and prompts once, seeded, so that batches are not one prompt's answers."""
    order = list(range(len(columns["prompt"])))
    random.Random(seed).shuffle(order)
    return {name: [values[i] for i in order] for name, values in columns.items()}
