"""Plots for report.md: training curves (loss and validation metrics against steps, from
metrics.jsonl) and predicted-vs-true scatter plots of regression runs. Drawn headless (Agg)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CURVES = "training_curves.png"
SCATTER = "predicted_vs_true.png"


def training_curves(run_dir: Path, scores: tuple[str, ...] = ("eval_accuracy", "eval_f1")) -> str:
    """Draw run_dir/training_curves.png and return the Markdown that shows it ('' if nothing to
    draw). People read a loss curve faster than a log: over-fitting shows as the lines parting.
    `scores`: the validation metrics drawn beside the loss."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return ""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]

    def series(key: str) -> list[tuple[int, float]]:
        # the best model is re-evaluated after training at the last step: keep the first point
        points: dict[int, float] = {}
        for r in records:
            if key in r:
                points.setdefault(r["step"], r[key])
        return sorted(points.items())

    train, evals = series("loss"), series("eval_loss")
    drawn = {key: series(key) for key in scores if series(key)}
    if len(train) + len(evals) < 2:
        return ""
    plt = _pyplot()
    panels = 2 if drawn else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.6), squeeze=False)
    loss_ax = axes[0][0]
    for points, label in ((train, "training loss"), (evals, "validation loss")):
        if points:
            loss_ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=label)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    if drawn:
        score_ax = axes[0][1]
        for key, points in drawn.items():
            score_ax.plot(*zip(*points), marker="o", label=key.removeprefix("eval_") + " (validation)")
        score_ax.set_xlabel("step")
        if all(0 <= v <= 1 for points in drawn.values() for _, v in points):
            score_ax.set_ylim(0, 1.02)  # shares and rates: the whole scale, so gains are not magnified
        score_ax.legend()
        score_ax.grid(alpha=0.3)
    save_figure(fig, run_dir / CURVES)
    return f"\n## Training curves\n\n![training curves]({CURVES})\n"


def predicted_vs_true(run_dir: Path, gold: list[float], predicted: list[float], split: str = "test") -> str:
    """Draw run_dir/predicted_vs_true.png (one point per row, and the diagonal where a perfect
    model's points would lie) and return the Markdown that shows it. A scatter shows at a glance
    what one number cannot: a model that predicts the mean for every row, or one that is right
    in the middle of the range and wrong at its ends."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.scatter(gold, predicted, s=14, alpha=0.6)
    low, high = min(min(gold), min(predicted)), max(max(gold), max(predicted))
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="predicted = true")
    ax.set_xlabel("true label")
    ax.set_ylabel("predicted")
    ax.set_title(f"{split} split, {len(gold)} rows")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    save_figure(fig, run_dir / SCATTER)
    return f"\n## Predicted vs true ({split} split)\n\n![predicted vs true]({SCATTER})\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: CI, cron, ssh
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write the figure to a new temp file and rename it onto `path`: readers never see half a
    PNG, and a link at `path` (or at a temp name) is never written through."""
    import matplotlib.pyplot as plt

    from llmtune.outputs import temp_file, umask

    fig.tight_layout()
    fd, tmp = temp_file(path.parent, path.name)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, dpi=110, format="png")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
