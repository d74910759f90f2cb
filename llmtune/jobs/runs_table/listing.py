"""`llmtune runs [DIR]` and `llmtune runs show RUN`: what the runs under a folder are, read
only from the files they wrote (manifest.json, recipe.yaml, eval.json, predictions.jsonl,
metrics.jsonl). No model is loaded, nothing is written, and a folder without an llmtune
manifest is not a run: it is skipped and never touched.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from llmtune.errors import BadInput
from llmtune.provenance import read_manifest
from llmtune.runs.disk import size_of
from llmtune.runs.rundir import LOCK_NAME

# the metric a run is known by, in this order of preference (the first its eval.json has)
HEADLINES = (
    "accuracy",
    "pairwise_accuracy",
    "exact_match",
    "mean_reward",
    "win_rate",
    "f1",
    "mae",
    "rmse",
    "perplexity",
    "loss",
)
LOWER_IS_BETTER = ("mae", "rmse", "perplexity", "loss")
MAX_DEPTH = 3  # runs/<date>/<name>: output.dir may nest runs a little


@dataclass
class RunRecord:
    """One run as the table shows it."""

    path: str
    name: str
    kind: str
    stage: str | None
    status: str
    started: str | None
    duration_s: float | None
    metric: str | None
    value: float | None
    ci95: list[float] | None
    size_bytes: int

    def as_dict(self) -> dict[str, Any]:
        """The record for --json."""
        return asdict(self)


def find_runs(folder: Path) -> list[Path]:
    """`folder` when it is a run, else the runs under it (a few levels down, not inside runs),
    by start time; BadInput when `folder` is not a folder."""
    if not folder.is_dir():
        raise BadInput(f"{folder} is not a folder of runs", key="DIR")
    if read_manifest(folder) is not None:
        return [folder]
    found: list[Path] = []
    level = [folder]
    for _ in range(MAX_DEPTH):
        below = []
        for parent in level:
            for child in sorted(_subfolders(parent)):
                (found if read_manifest(child) is not None else below).append(child)
        level = below
    return sorted(found, key=lambda p: ((read_manifest(p) or {}).get("started") or "", str(p)))


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [c for c in folder.iterdir() if c.is_dir() and not c.is_symlink()]
    except OSError:
        return []


def the_run(path: Path) -> dict[str, Any]:
    """The manifest of the run at `path`; BadInput when it is not an llmtune run."""
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is None:
        raise BadInput(f"{path} is not an llmtune run directory (no llmtune manifest.json)", key="RUN")
    return manifest


def record(run: Path) -> RunRecord:
    """The table row of one run."""
    manifest = the_run(run)
    recipe = stored_recipe(run)
    metric, value, ci = headline(run)
    stage = recipe.get("stage") or recipe.get("task")
    return RunRecord(
        path=str(run),
        name=run.name,  # what people type after `runs show`; the recipe's name may be shared
        kind=str(manifest.get("kind")),
        stage=str(stage) if stage else None,
        status=status_of(run, manifest),
        started=manifest.get("started"),
        duration_s=_duration(manifest),
        metric=metric,
        value=value,
        ci95=ci,
        size_bytes=size_of(run),
    )


def status_of(run: Path, manifest: dict[str, Any]) -> str:
    """completed | failed | interrupted | running; `stopped` for a run whose manifest still says
    running while the process named in its lock file is gone (killed without a chance to say)."""
    status = str(manifest.get("status"))
    if status != "running":
        return status
    try:
        words = (run / LOCK_NAME).read_text().split()
        pid = int(words[1]) if words[:1] == ["pid"] else None
    except (OSError, ValueError, IndexError):
        return status
    if pid is None:
        return status
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return "stopped"
    except PermissionError:
        pass  # another user's process: it exists
    return status


def stored_recipe(run: Path) -> dict[str, Any]:
    """recipe.yaml as the run wrote it (empty when missing or unreadable)."""
    try:
        data = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_json(path: Path) -> Any:
    """A JSON file a run wrote, or None."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def final_metrics(run: Path) -> dict[str, Any]:
    """The run's final test metrics: eval.json's `metrics` (or its top level), else the
    manifest summary's `test`."""
    evaluation = read_json(run / "eval.json")
    if isinstance(evaluation, dict):
        metrics = evaluation.get("metrics")
        return metrics if isinstance(metrics, dict) else evaluation
    summary = (read_manifest(run) or {}).get("summary") or {}
    return summary.get("test") if isinstance(summary.get("test"), dict) else {}


def headline(run: Path) -> tuple[str | None, float | None, list[float] | None]:
    """(metric, value, 95% interval) of the run's headline test metric. The interval is the one
    the run wrote (`<metric>_ci95`: Wilson for accuracy), or for mae a normal-approximation
    interval from predictions.jsonl's absolute errors."""
    metrics = final_metrics(run)
    for name in HEADLINES:
        value = metrics.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return name, float(value), interval(run, name, metrics)
    return None, None, None


def interval(run: Path, name: str, metrics: dict[str, Any]) -> list[float] | None:
    """The 95% interval of metric `name` (None when the run gives no way to know it)."""
    stored = metrics.get(f"{name}_ci95")
    if isinstance(stored, list) and len(stored) == 2:
        return [float(stored[0]), float(stored[1])]
    if name == "mae":
        errors = [abs(p - g) for g, p in numeric_predictions(run).values()]
        if len(errors) >= 2:
            mean = sum(errors) / len(errors)
            sd = math.sqrt(sum((e - mean) ** 2 for e in errors) / (len(errors) - 1))
            half = 1.96 * sd / math.sqrt(len(errors))
            return [round(mean - half, 6), round(mean + half, 6)]
    return None


def predictions(run: Path) -> dict[str, dict[str, Any]]:
    """predictions.jsonl by row id (rows without an id are keyed by their text)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        lines = (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return out
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "prediction" in row and "gold" in row:
            key = json.dumps(row.get("id", row.get("text")), sort_keys=True)
            out[key] = row
    return out


def numeric_predictions(run: Path) -> dict[str, tuple[float, float]]:
    """(gold, prediction) of a regression run's predictions.jsonl, by row id."""
    out = {}
    for key, row in predictions(run).items():
        gold, predicted = row["gold"], row["prediction"]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (gold, predicted)):
            out[key] = (float(gold), float(predicted))
    return out


def _duration(manifest: dict[str, Any]) -> float | None:
    try:
        start = dt.datetime.fromisoformat(str(manifest["started"]))
        end = manifest.get("ended")
        stop = dt.datetime.fromisoformat(str(end)) if end else dt.datetime.now(start.tzinfo)
    except (KeyError, TypeError, ValueError):
        return None
    return max(0.0, (stop - start).total_seconds())


def human_size(size: int) -> str:
    """Bytes as people read them (1000-based, as `du --si`)."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """12s, 3m05s, 2h07m."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def shown_metric(value: float | None, ci: list[float] | None) -> str:
    """0.8125 [0.71, 0.89]."""
    if value is None:
        return "-"
    text = f"{value:.4g}"
    return f"{text} [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else text
