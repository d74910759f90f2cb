"""Classification metrics from scikit-learn, in the shape every job reports them."""

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
