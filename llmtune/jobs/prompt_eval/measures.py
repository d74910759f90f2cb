"""Each pair's metrics as `Measure`s over its rows, so that one definition gives the number in the
table, its value on a slice, its interval and its paired tests.

Classification: accuracy and invalid_rate are proportions; macro precision, recall and F1 are
computed from the rows' (gold, predicted) label codes by the same formulas as scikit-learn's
`precision_recall_fscore_support(average="macro", zero_division=0)` (a test holds them equal),
fast enough to recompute on a thousand resamples. Free text: see references.py, assertions.py and
judge.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmtune.jobs.prompt_eval.references import ReferenceScores
from llmtune.jobs.prompt_eval.statistics import Measure, mean_of, share_of


def classification_measures(
    gold: list[str], predicted: list[str | None], labels: list[str], with_invalid: bool
) -> dict[str, Measure]:
    """accuracy, macro precision / recall / f1 (and invalid_rate for generated answers)."""
    code = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    rows = np.array([[code[g], code.get(p, k) if p is not None else k] for g, p in zip(gold, predicted)])
    out = {
        "accuracy": share_of([g == p for g, p in zip(gold, predicted)]),
        "precision": Measure(rows, lambda r: macro(r, k)[0]),
        "recall": Measure(rows, lambda r: macro(r, k)[1]),
        "f1": Measure(rows, lambda r: macro(r, k)[2]),
    }
    if with_invalid:
        out["invalid_rate"] = share_of([p is None for p in predicted])
    return out


def macro(rows: np.ndarray, k: int) -> tuple[float, float, float]:
    """Macro precision, recall and F1 over the k labels of (gold, predicted) code rows; a predicted
    code k is an answer that named no label (wrong for every label); 0 where undefined."""
    counts = np.bincount(rows[:, 0] * (k + 1) + rows[:, 1], minlength=k * (k + 1)).reshape(k, k + 1)
    tp = np.diag(counts[:, :k]).astype(float)
    predicted = counts[:, :k].sum(axis=0).astype(float)
    actual = counts.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(k), where=total > 0)
    return float(precision.mean()), float(recall.mean()), float(f1.mean())


def generation_measures(
    references: ReferenceScores,
    checks: dict[str, list[bool]],
    judge_scores: list[float | None] | None,
) -> dict[str, Measure]:
    """exact_match, contains, chrf, bleu, rouge_l, pass_rate and pass_rate:NAME, judge_score."""
    rows = references.rows
    n = len(rows)
    out: dict[str, Measure] = {
        "exact_match": share_of([r["exact_match"] == 1.0 for r in rows]),
        "contains": share_of([r["contains"] == 1.0 for r in rows]),
        "chrf": Measure(references.stats["chrf"], lambda s: _corpus("chrf", s)),
        "bleu": Measure(references.stats["bleu"], lambda s: _corpus("bleu", s)),
        "rouge_l": mean_of([r["rouge_l"] for r in rows]),
    }
    if checks:
        out["pass_rate"] = share_of([all(passed[i] for passed in checks.values()) for i in range(n)])
        for name, passed in checks.items():
            out[f"pass_rate:{name}"] = share_of(passed)
    if judge_scores is not None:
        out["judge_score"] = mean_of(judge_scores)
    return out


def _corpus(name: str, stats: np.ndarray) -> float:
    from llmtune.jobs.prompt_eval.references import corpus_from_stats

    return corpus_from_stats(name, stats)


def values(measures: dict[str, Measure], indices: list[int] | None = None) -> dict[str, Any]:
    """Every metric's value on the rows at `indices` (all rows: None), with the row count."""
    idx = None if indices is None else np.asarray(indices, dtype=int)
    n = len(next(iter(measures.values())).rows) if idx is None else len(idx)
    return {**{name: m.value(idx) for name, m in measures.items()}, "n": n}


def annotate(
    pairs: list[dict[str, Any]],
    measures: list[dict[str, Measure]],
    metrics: list[str],
    confidence: float,
    resamples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Each pair's `intervals` for the shown metrics; returns every paired comparison."""
    from llmtune.jobs.prompt_eval.statistics import compare, interval, resample_indices

    n = len(next(iter(measures[0].values())).rows)
    draws = resample_indices(n, resamples, seed)  # the same rows for every pair: paired tests
    for pair, measured in zip(pairs, measures):
        pair["intervals"] = {m: interval(measured[m], confidence, draws) for m in metrics if m in measured}
    return compare(pairs, measures, metrics, confidence, draws)


def one_class_warning(pair: dict[str, Any], predicted: list[str | None], gold: list[str]) -> str | None:
    """A warning when a classifier gives the same answer for every row: its accuracy is then the
    share of that class in the data, not skill."""
    answers = set(predicted)
    if len(predicted) < 2 or len(answers) != 1:
        return None
    (only,) = answers
    share = sum(g == only for g in gold) / len(gold)
    said = "no label" if only is None else repr(only)
    return (
        f"{pair['model']} x {pair['prompt']} predicts {said} for every row: its accuracy "
        f"({share:.4f}) is the share of that class, not skill"
    )
