"""How much the people who ranked the same prompts agree (`llmtune rank --stats`, and next to a
reward model's pairwise accuracy in the rlhf reports).

Two figures, over the prompts that at least two people ranked:

- **pairwise agreement**: for every two annotators of a prompt and every two of its responses,
  do they say the same (X better, Y better, or tied)? The share of such comparisons that match,
  pooled over all prompts, and per prompt. It reads like a reward model's pairwise accuracy: a
  model trained on these rankings cannot be expected to agree with people more than they agree
  with each other.
- **Krippendorff's alpha (ordinal)**, from the `krippendorff` package: every response of every
  prompt is a unit, each annotator's value is the response's position in their ranking (1 =
  best; tied responses share the mean of their places). 1 is perfect agreement, 0 what chance
  gives, below 0 systematic disagreement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

from llmtune.data.annotators import positions
from llmtune.data.rankings import Ranking

MOST_DISAGREED = 5
"""Prompts flagged as the ones people disagree on most (lowest pairwise agreement)."""


@dataclass
class PromptAgreement:
    """One prompt ranked by two people or more."""

    name: str
    annotators: int
    agreement: float
    """Share of matching comparisons (see the module docstring)."""
    comparisons: int


@dataclass
class Agreement:
    """Agreement over a set of ranked rows."""

    annotators: dict[str, int] = field(default_factory=dict)
    """Rows ranked by each annotator."""
    shared_rows: int = 0
    """Rows ranked by two annotators or more (the only ones agreement is measured on)."""
    pairwise: float | None = None
    comparisons: int = 0
    alpha: float | None = None
    per_prompt: list[PromptAgreement] = field(default_factory=list)

    def most_disagreed(self, count: int = MOST_DISAGREED) -> list[PromptAgreement]:
        """The prompts with the lowest agreement, below 1, worst first."""
        below = [p for p in self.per_prompt if p.agreement < 1.0]
        return sorted(below, key=lambda p: (p.agreement, -p.comparisons))[:count]

    def summary(self) -> dict[str, object]:
        """The figures for eval.json."""
        return {
            "annotators": len(self.annotators),
            "shared_rows": self.shared_rows,
            "pairwise_agreement": self.pairwise,
            "comparisons": self.comparisons,
            "krippendorff_alpha_ordinal": self.alpha,
        }


def agreement_of(rows: list[tuple[str, dict[str, Ranking]]]) -> Agreement:
    """Agreement over `rows`: (a row's name, its annotators' rankings)."""
    out = Agreement()
    matched = total = 0
    for name, people in rows:
        for person in people:
            out.annotators[person] = out.annotators.get(person, 0) + 1
        if len(people) < 2:
            continue
        out.shared_rows += 1
        same, count = _compare(list(people.values()))
        matched, total = matched + same, total + count
        if count:
            out.per_prompt.append(PromptAgreement(name, len(people), same / count, count))
    out.comparisons = total
    out.pairwise = matched / total if total else None
    out.alpha = _alpha(rows) if out.shared_rows else None
    return out


def _compare(rankings: list[Ranking]) -> tuple[int, int]:
    """(matching, all) comparisons of every two rankings over every two responses."""
    letters = sorted(x for tier in rankings[0].tiers for x in tier)
    places = [positions(r) for r in rankings]
    same = count = 0
    for first, second in combinations(places, 2):
        for x, y in combinations(letters, 2):
            same += _sign(first[x] - first[y]) == _sign(second[x] - second[y])
            count += 1
    return same, count


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def _alpha(rows: list[tuple[str, dict[str, Ranking]]]) -> float | None:
    """Krippendorff's ordinal alpha with responses as units and positions as values; None when it
    is undefined (a single value everywhere)."""
    import krippendorff
    import numpy as np

    people = sorted({person for _, ranked in rows for person in ranked})
    units: list[list[float]] = []
    for _, ranked in rows:
        if len(ranked) < 2:
            continue
        places = {person: positions(r) for person, r in ranked.items()}
        for letter in sorted(next(iter(places.values()))):
            units.append([places[p][letter] if p in places else np.nan for p in people])
    data = np.array(units, dtype=float).T  # annotators x units
    try:
        value = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal")
    except (ValueError, ZeroDivisionError):
        return None
    return None if np.isnan(value) else float(value)
