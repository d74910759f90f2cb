"""`llmtune runs`: the runs under a folder as a table, one run in detail, runs compared, and
the disk completed runs no longer need. Reads only what the runs wrote; loads no model.

    llmtune runs                      # the runs under runs/
    llmtune runs show runs/sentiment  # summary, plan, metrics of one run
    llmtune runs compare runs/a runs/b
    llmtune runs clean --yes          # delete the checkpoints of completed runs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from llmtune.console import safe_text
from llmtune.jobs.runs_table.clean import delete, plan_cleanup
from llmtune.jobs.runs_table.compare import compare
from llmtune.jobs.runs_table.listing import (
    final_metrics,
    find_runs,
    human_duration,
    human_size,
    record,
    shown_metric,
    the_run,
)
from llmtune.runs.disk import size_of


def list_runs(folder: Path, *, as_json: bool) -> None:
    """Print the table of the runs under `folder` (one JSON object per run with --json)."""
    records = [record(run) for run in find_runs(folder)]
    if as_json:
        for r in records:
            print(json.dumps(r.as_dict()))
        return
    if not records:
        print(f"no llmtune runs under {safe_text(folder)}", file=sys.stderr)
        return
    rows = [
        [
            r.name,
            f"{r.kind}/{r.stage}" if r.stage else r.kind,
            r.status,
            (r.started or "-")[:16].replace("T", " "),
            human_duration(r.duration_s),
            f"{r.metric} {shown_metric(r.value, r.ci95)}" if r.metric else "-",
            human_size(r.size_bytes),
        ]
        for r in records
    ]
    print_table(["run", "kind", "status", "started", "took", "test metric [95% interval]", "size"], rows)


def show_run(run: Path, *, as_json: bool) -> None:
    """Print one run: how it went, its plan and summary, its test metrics, its training log."""
    manifest = the_run(run)
    summary = manifest.get("summary") if isinstance(manifest.get("summary"), dict) else {}
    metrics = final_metrics(run)
    log = _log_lines(run)
    files = {c.name + ("/" if c.is_dir() else ""): size_of(c) for c in sorted(run.iterdir())}
    if as_json:
        data = {"run": record(run).as_dict(), "manifest": manifest, "metrics": metrics, "files": files}
        print(json.dumps({**data, "log": {"lines": len(log), "last": log[-1] if log else None}}, default=str))
        return
    r = record(run)
    print_table(
        ["", ""],
        [
            ["run", r.path],
            ["kind", f"{r.kind}/{r.stage}" if r.stage else r.kind],
            ["status", r.status],
            ["started", r.started],
            ["took", human_duration(r.duration_s)],
            ["headline", f"{r.metric} {shown_metric(r.value, r.ci95)}" if r.metric else "-"],
            ["size", human_size(r.size_bytes)],
        ],
        header=False,
    )
    plan = {k: v for k, v in summary.items() if k not in ("test", "test_before", "validation", "warnings")}
    if plan:
        _section("plan and summary", [[k, _cell(v)] for k, v in plan.items()])
    scalars = {
        k: v for k, v in metrics.items() if isinstance(v, int | float | str | list) and len(str(v)) < 60
    }
    if scalars:
        _section("test metrics", [[k, _cell(v)] for k, v in scalars.items()])
    if log:
        losses = [x["loss"] for x in log if isinstance(x.get("loss"), int | float)]
        line = f"{len(log)} lines in metrics.jsonl"
        if losses:
            line += f"; loss {losses[0]:.4g} at the start, {losses[-1]:.4g} at the end"
        _section("training log", [[line]])
    for warning in summary.get("warnings") or []:
        print(f"warning: {safe_text(warning)}")
    _section("files", [[name, human_size(size)] for name, size in files.items()])


def compare_runs(runs: list[Path], *, as_json: bool) -> None:
    """Print `compare(runs)`: metrics side by side, the verdicts, the recipe keys that differ."""
    result = compare(runs)
    if as_json:
        print(json.dumps(result))
        return
    names = [Path(r).name for r in result["runs"]]
    rows = [["test rows", *[v if v is not None else "-" for v in result["rows"]]]]
    rows += [
        [m, *[shown_metric(c["value"], c["ci95"]) for c in cells]] for m, cells in result["metrics"].items()
    ]
    print_table(["metric", *names], rows)
    for d in result["differences"]:
        verdict = {True: "larger than the noise", False: "within the noise", None: "cannot tell"}
        how = d["method"] + (f", p = {d['p_value']:.3g}" if "p_value" in d else "")
        print(
            f"\n{safe_text(Path(d['run']).name)} vs {safe_text(Path(d['against']).name)}: {d['metric']} "
            f"{d['difference']:+.4g}: {verdict[d['beyond_noise']]} ({safe_text(how)})"
        )
    if result["recipe_differences"]:
        _section(
            "recipe keys that differ", [[k, *map(_cell, v)] for k, v in result["recipe_differences"].items()]
        )
    else:
        print("\nthe recipes are the same (but for name and output.dir)")


def clean_runs(folder: Path, *, yes: bool, as_json: bool) -> None:
    """List what `runs clean` would delete; delete it with `yes`."""
    cleanup = plan_cleanup(folder)
    freed = delete(cleanup) if yes else 0
    if as_json:
        print(json.dumps({**cleanup.as_dict(), "deleted": yes, "freed_bytes": freed}))
        return
    for items in cleanup.items.values():
        for item in items:
            print(
                f"{'deleted' if yes else 'would delete'}  {safe_text(item.path)}  ({human_size(item.size)})"
            )
    sys.stdout.flush()
    for run, why in cleanup.skipped.items():
        print(f"kept  {safe_text(run)}: {why}", file=sys.stderr)
    if not cleanup.items:
        print("nothing to clean", file=sys.stderr)
    elif yes:
        print(f"freed {human_size(freed)}", file=sys.stderr)
    else:
        print(f"{human_size(cleanup.total)} would be freed; run again with --yes to delete", file=sys.stderr)


def print_table(columns: list[str], rows: list[list[Any]], *, header: bool = True) -> None:
    """An aligned plain-text table on stdout (run names are shown safely: they are user data)."""
    cells = [[safe_text(c) for c in row] for row in ([columns] if header else []) + rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _section(title: str, rows: list[list[Any]]) -> None:
    print(f"\n{title}")
    if rows:
        print_table([""] * (len(rows[0]) + 1), [["", *row] for row in rows], header=False)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return "-" if value is None else str(value)


def _log_lines(run: Path) -> list[dict[str, Any]]:
    try:
        text = (run / "metrics.jsonl").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


__all__ = ["clean_runs", "compare_runs", "list_runs", "show_run"]
