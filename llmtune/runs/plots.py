"""Training curves for report.md: loss and validation metrics against steps, from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

CURVES = "training_curves.png"


def training_curves(run_dir: Path) -> str:
    """Draw run_dir/training_curves.png and return the Markdown that shows it ('' if nothing to
    draw). People read a loss curve faster than a log: over-fitting shows as the lines parting."""
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
    scores = {key: series(key) for key in ("eval_accuracy", "eval_f1") if series(key)}
    if len(train) + len(evals) < 2:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if scores else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.6), squeeze=False)
    loss_ax = axes[0][0]
    for points, label in ((train, "training loss"), (evals, "validation loss")):
        if points:
            loss_ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=label)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    if scores:
        score_ax = axes[0][1]
        for key, points in scores.items():
            score_ax.plot(*zip(*points), marker="o", label=key.removeprefix("eval_") + " (validation)")
        score_ax.set_xlabel("step")
        score_ax.set_ylim(0, 1.02)
        score_ax.legend()
        score_ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = run_dir / f".{CURVES}.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(run_dir / CURVES)
    return f"\n## Training curves\n\n![training curves]({CURVES})\n"
