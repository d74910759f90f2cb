"""How sure a prompt-eval table is: an interval for every metric and a paired test for every two
prompts (or models) on the same rows.

A metric is a `Measure` over the scored rows:
- a proportion (accuracy, exact_match, a pass rate): one 0/1 per row. Its interval is Wilson's
  (scipy's binomtest), and two pairs are compared by McNemar's exact test: a two-sided binomial
  test (scipy) on the rows where exactly one of them is right;
- anything else (F1, chrF, BLEU, ROUGE-L, a judge's mean score): per-row values and a function
  that computes the metric from any subset of rows (chrF/BLEU: from sacrebleu's statistics). Its
  interval is a percentile bootstrap over rows, and two pairs are compared by a paired bootstrap
  (the same resampled rows for both; p = the share of resampled differences, centred on their
  mean, at least as far from 0 as the observed one: sacrebleu's paired_bs test). Resamples are
  drawn from a generator seeded by the recipe's seed, so a rerun gives the same numbers.

A difference is marked significant when p < 1 - confidence. No correction is made for the number
of comparisons: with many pairs, read a marked difference with p near the threshold with care.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Measure:
    """One metric of one pair over its rows: `proportion` (rows: 0/1) or computed by `reduce`."""

    rows: np.ndarray
    reduce: Callable[[np.ndarray], float | None] | None = None  # None: a proportion (the mean)

    @property
    def proportion(self) -> bool:
        """Whether the metric is a share of rows (Wilson / McNemar) rather than resampled."""
        return self.reduce is None

    def value(self, indices: np.ndarray | None = None) -> float | None:
        """The metric on the rows at `indices` (every row: None)."""
        rows = self.rows if indices is None else self.rows[indices]
        if len(rows) == 0:
            return None
        if self.reduce is None:
            return float(rows.mean())
        return self.reduce(rows)


def mean_of(values: list[float | None]) -> Measure:
    """A mean over rows, where None (e.g. an unparseable judge reply) is left out."""
    rows = np.array([np.nan if v is None else v for v in values], dtype=float)

    def reduce(sub: np.ndarray) -> float | None:
        kept = sub[~np.isnan(sub)]
        return float(kept.mean()) if len(kept) else None

    return Measure(rows, reduce)


def share_of(passed: list[bool]) -> Measure:
    """A proportion of rows."""
    return Measure(np.array(passed, dtype=float))


def wilson(successes: int, n: int, confidence: float) -> list[float] | None:
    """Wilson's score interval of successes/n (scipy)."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """`resamples` bootstrap draws of n row indices (with replacement), seeded."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_values(measure: Measure, draws: np.ndarray) -> np.ndarray:
    """The metric on each resample (NaN where it is undefined on that resample)."""
    out = [measure.value(idx) for idx in draws]
    return np.array([np.nan if v is None else v for v in out], dtype=float)


def interval(measure: Measure, confidence: float, draws: np.ndarray) -> list[float] | None:
    """The metric's interval: Wilson for a proportion, else the bootstrap percentiles."""
    if measure.proportion:
        return wilson(int(round(measure.rows.sum())), len(measure.rows), confidence)
    values = bootstrap_values(measure, draws)
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test of two paired 0/1 vectors: the two-sided binomial test (p = 0.5) of the
    rows where only `a` is right among the rows where exactly one is right."""
    from scipy.stats import binomtest

    only_a = int(((a == 1) & (b == 0)).sum())
    only_b = int(((a == 0) & (b == 1)).sum())
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return {"test": "mcnemar-exact", "only_a": only_a, "only_b": only_b, "p_value": p}


def paired_bootstrap(a: Measure, b: Measure, draws: np.ndarray, confidence: float) -> dict[str, Any]:
    """The paired bootstrap of a's metric minus b's on the same resampled rows: the interval of
    the difference and a two-sided p-value (differences centred on their mean under the null)."""
    observed = (a.value() or 0.0) - (b.value() or 0.0)
    diffs = bootstrap_values(a, draws) - bootstrap_values(b, draws)
    diffs = diffs[~np.isnan(diffs)]
    if not len(diffs):
        return {"test": "paired-bootstrap", "p_value": None, "difference_interval": None}
    centred = diffs - diffs.mean()
    p = (1 + int((np.abs(centred) >= abs(observed) - 1e-12).sum())) / (len(diffs) + 1)
    tail = (1 - confidence) / 2 * 100
    span = [float(np.percentile(diffs, tail)), float(np.percentile(diffs, 100 - tail))]
    return {"test": "paired-bootstrap", "p_value": float(min(p, 1.0)), "difference_interval": span}


def compared_pairs(pairs: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Which pairs are compared: every two that share a model (prompts compared) or a prompt
    (models compared), in recipe order."""
    out = []
    for i, j in itertools.combinations(range(len(pairs)), 2):
        a, b = pairs[i], pairs[j]
        if a["model"] == b["model"] or a["prompt"] == b["prompt"]:
            out.append((i, j))
    return out


def compare(
    pairs: list[dict[str, Any]],
    measures: list[dict[str, Measure]],
    metrics: list[str],
    confidence: float,
    draws: np.ndarray,
) -> list[dict[str, Any]]:
    """Every comparison of two pairs on each metric: the difference (a - b), the test and its p,
    and whether the difference is larger than the noise (p < 1 - confidence)."""
    out = []
    for i, j in compared_pairs(pairs):
        for metric in metrics:
            a, b = measures[i].get(metric), measures[j].get(metric)
            if a is None or b is None:
                continue
            va, vb = a.value(), b.value()
            if va is None or vb is None:
                continue
            test = mcnemar(a.rows, b.rows) if a.proportion else paired_bootstrap(a, b, draws, confidence)
            p = test["p_value"]
            out.append(
                {
                    "a": _name(pairs[i]),
                    "b": _name(pairs[j]),
                    "metric": metric,
                    "a_value": va,
                    "b_value": vb,
                    "difference": va - vb,
                    **test,
                    "significant": p is not None and p < 1 - confidence,
                }
            )
    return out


def _name(pair: dict[str, Any]) -> str:
    return f"{pair['model']} x {pair['prompt']}"
