"""`llmtune runs compare RUN RUN ...`: test metrics side by side with their intervals, whether
each run's headline differs from the first run's by more than the noise, and the recipe keys
that differ.

How "larger than the noise" is judged, best evidence first:
1. paired, on the test rows both runs predicted (predictions.jsonl, matched by id, same gold):
   classification: exact McNemar test (two-sided binomial test on the rows only one run got
   right); regression: exact sign test on which run's absolute error is smaller (ties dropped).
   A difference is larger than the noise when p < 0.05.
2. otherwise, the 95% intervals of the headline metric: larger than the noise when they do not
   overlap (a conservative check: overlapping intervals can still hide a real difference).
3. otherwise it cannot be told, and the verdict says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune.errors import BadInput
from llmtune.jobs.runs_table.listing import (
    LOWER_IS_BETTER,
    final_metrics,
    headline,
    interval,
    numeric_predictions,
    predictions,
    stored_recipe,
    the_run,
)

ALPHA = 0.05
IGNORED_KEYS = ("name", "output.dir")  # differ between any two runs; say nothing about results


def compare(runs: list[Path]) -> dict[str, Any]:
    """The comparison of `runs` (at least two), as --json prints it."""
    if len(runs) < 2:
        raise BadInput("runs compare needs at least two runs", key="RUN")
    names = [str(r) for r in runs]
    for run in runs:
        the_run(run)
    metrics = [final_metrics(r) for r in runs]
    shared = [
        k
        for k in metrics[0]
        if all(_number(m.get(k)) for m in metrics) and not k.endswith("_ci95") and k != "n"
    ]
    table = {
        name: [{"value": m[name], "ci95": interval(r, name, m)} for r, m in zip(runs, metrics)]
        for name in shared
    }
    head = headline(runs[0])[0]
    verdicts = [judge(runs[0], run, head) for run in runs[1:]] if head in shared else []
    return {
        "runs": names,
        "rows": [m.get("n") for m in metrics],
        "metrics": table,
        "headline": head,
        "differences": verdicts,
        "recipe_differences": recipe_differences(runs),
    }


def judge(base: Path, other: Path, metric: str) -> dict[str, Any]:
    """Whether `other`'s `metric` differs from `base`'s by more than the noise, and how that was
    judged (see the module docstring)."""
    a, b = final_metrics(base)[metric], final_metrics(other)[metric]
    out: dict[str, Any] = {"run": str(other), "against": str(base), "metric": metric, "difference": b - a}
    better = b < a if metric in LOWER_IS_BETTER else b > a
    out["better"] = None if a == b else better
    paired = paired_test(base, other)
    if paired is not None:
        out.update(paired)
        out["beyond_noise"] = paired["p_value"] < ALPHA
        return out
    ci_a, ci_b = interval(base, metric, final_metrics(base)), interval(other, metric, final_metrics(other))
    if ci_a and ci_b:
        overlap = ci_a[0] <= ci_b[1] and ci_b[0] <= ci_a[1]
        out.update(method="95% intervals", beyond_noise=not overlap)
        return out
    out.update(method="none: neither per-row predictions of the same rows nor intervals", beyond_noise=None)
    return out


def paired_test(base: Path, other: Path) -> dict[str, Any] | None:
    """The exact paired test on the test rows both runs predicted (None without such rows)."""
    from scipy.stats import binomtest

    left, right = predictions(base), predictions(other)
    shared = [k for k in left if k in right and left[k]["gold"] == right[k]["gold"]]
    if not shared:
        return None
    numeric_a, numeric_b = numeric_predictions(base), numeric_predictions(other)
    if all(k in numeric_a and k in numeric_b for k in shared):
        gold = {k: numeric_a[k][0] for k in shared}
        wins_b = sum(abs(numeric_b[k][1] - gold[k]) < abs(numeric_a[k][1] - gold[k]) for k in shared)
        wins_a = sum(abs(numeric_b[k][1] - gold[k]) > abs(numeric_a[k][1] - gold[k]) for k in shared)
        method = "exact sign test on absolute errors"
    else:
        right_a = {k: left[k]["prediction"] == left[k]["gold"] for k in shared}
        right_b = {k: right[k]["prediction"] == right[k]["gold"] for k in shared}
        wins_b = sum(right_b[k] and not right_a[k] for k in shared)
        wins_a = sum(right_a[k] and not right_b[k] for k in shared)
        method = "exact McNemar test"
    n = wins_a + wins_b
    p = binomtest(wins_b, n, 0.5).pvalue if n else 1.0
    return {
        "method": f"{method} on {len(shared)} shared test rows",
        "shared_rows": len(shared),
        "only_this_better": wins_b,
        "only_first_better": wins_a,
        "p_value": round(float(p), 6),
    }


def recipe_differences(runs: list[Path]) -> dict[str, list[Any]]:
    """Recipe keys (dotted) whose values differ between the runs, each with every run's value."""
    flat = [_flatten(stored_recipe(r)) for r in runs]
    keys = sorted(set().union(*flat))
    return {
        k: [f.get(k) for f in flat]
        for k in keys
        if k not in IGNORED_KEYS and any(f.get(k) != flat[0].get(k) for f in flat)
    }


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict) or not data:
        return {prefix.rstrip("."): data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
