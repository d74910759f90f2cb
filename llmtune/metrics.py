"""Classification and regression metrics from scikit-learn and scipy, in the shape every job
reports them."""

from __future__ import annotations

from typing import Any


def classification_metrics(gold: list[str], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    """accuracy, macro precision/recall/F1, per-class scores and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(
        gold, predicted, labels=labels, average="macro", zero_division=0
    )
    pc, rc, fc, support = precision_recall_fscore_support(
        gold, predicted, labels=labels, average=None, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "accuracy_ci95": accuracy_interval(sum(g == q for g, q in zip(gold, predicted)), len(gold)),
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
        "per_class": {
            label: {
                "precision": float(pc[i]),
                "recall": float(rc[i]),
                "f1": float(fc[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": {
            "labels": labels,
            "matrix": confusion_matrix(gold, predicted, labels=labels).tolist(),
        },
        "n": len(gold),
        "predicted_labels": sorted(set(predicted)),
    }


def accuracy_interval(correct: int, n: int) -> list[float] | None:
    """The 95% Wilson score interval of an accuracy of correct/n (scipy), so that 1.0 on 12 rows
    reads as [0.76, 1.0], not as 1.0."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    interval = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(float(interval.low), 4), round(float(interval.high), 4)]


def confusion_markdown(metrics: dict[str, Any]) -> str:
    """The confusion matrix as a Markdown table (rows: gold, columns: predicted)."""
    cm = metrics["confusion_matrix"]
    head = "| gold \\ predicted | " + " | ".join(cm["labels"]) + " |"
    lines = [head, "|---|" + "---|" * len(cm["labels"])]
    for label, row in zip(cm["labels"], cm["matrix"]):
        lines.append(f"| {label} | " + " | ".join(str(x) for x in row) + " |")
    return "\n".join(lines) + "\n"


# metrics where a smaller value is the better model (every other one: larger is better)
LOWER_IS_BETTER = ("loss", "mae", "mse", "rmse", "perplexity", "invalid_rate")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller `metric` (with or without the eval_ / test_ prefix) is better: the one
    rule for early stopping, keeping the best checkpoint and ranking sweep trials."""
    return metric.removeprefix("eval_").removeprefix("test_").endswith(LOWER_IS_BETTER)


def regression_metrics(gold: list[float], predicted: list[float]) -> dict[str, Any]:
    """MAE, RMSE and R² (scikit-learn), Pearson's and Spearman's correlation (scipy). A
    correlation is None where it is undefined: fewer than two rows, or constant predictions
    (a model that has not learned to tell the rows apart)."""
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    return {
        "mae": float(mean_absolute_error(gold, predicted)),
        "rmse": float(root_mean_squared_error(gold, predicted)),
        "r2": float(r2_score(gold, predicted)) if len(gold) > 1 else None,
        "pearson": _correlation("pearsonr", gold, predicted),
        "spearman": _correlation("spearmanr", gold, predicted),
        "n": len(gold),
    }


def _correlation(name: str, gold: list[float], predicted: list[float]) -> float | None:
    import math

    import scipy.stats

    if len(gold) < 2 or len(set(gold)) < 2 or len(set(predicted)) < 2:
        return None  # scipy would warn and answer nan
    value = float(getattr(scipy.stats, name)(gold, predicted).statistic)
    return None if math.isnan(value) else value
