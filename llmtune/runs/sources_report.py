"""What a run's report adds for mixtures and replay: the per-source table (one epoch's draw and
each source's final metrics) and the retain table (the model on general data before and after
training: what fine-tuning made it forget). Split from the lifecycle so it reads whole."""

from __future__ import annotations

from typing import Any

from llmtune.console import table
from llmtune.runs.rundir import RunDir

Metrics = dict[str, Any]


def forgetting(before: Metrics, after: Metrics | None) -> dict[str, Metrics | None]:
    """{before, after, change}: change is after - before for every number both have (a loss that
    rose, an accuracy that fell: what training made the model forget)."""
    after = after or {}
    change = {
        k: after[k] - v
        for k, v in before.items()
        if k != "n" and isinstance(v, int | float) and isinstance(after.get(k), int | float)
    }
    return {"before": before, "after": after, "change": change}


def _retain_rows(retain: dict[str, Metrics | None]) -> list[list[Any]]:
    before, after, change = (retain[k] or {} for k in ("before", "after", "change"))
    return [[k, before[k], after[k], change[k]] for k in change]


def _source_rows(sources: dict[str, Metrics]) -> tuple[list[str], list[list[Any]]]:
    measured = sorted({k for s in sources.values() for k in s.get("metrics", {}) if k != "n"})
    columns = ["source", "weight / ratio", "rows", "drawn", "share of epoch", "measured on", *measured]
    rows = []
    for name, s in sources.items():
        share = s["weight"] if s.get("weight") is not None else f"replay {s.get('ratio')}"
        metrics = s.get("metrics", {})
        on = f"{s['measured_on']} ({metrics.get('n', 0)} rows)" if s.get("measured_on") else "-"
        values = [metrics.get(k, "-") for k in measured]
        rows.append([name, share, s.get("rows"), s.get("drawn"), s.get("share"), on, *values])
    return columns, rows


def show_retain_and_sources(run_dir: RunDir, outcome: Any) -> None:
    """The retain and per-source tables of a run's `Outcome` on the console, and added to report.md."""
    from llmtune.console import markdown_table
    from llmtune.runs.selection import selection_markdown

    lines = selection_markdown(outcome.selection)
    if outcome.sources:
        columns, rows = _source_rows(outcome.sources)
        table("data sources (one epoch)", columns, rows)
        lines += ["## Data sources", "", MIXTURE_NOTE, "", markdown_table(columns, rows)]
    if outcome.retain is not None:
        rows = _retain_rows(outcome.retain)
        table("retain: general data", ["metric", "before training", "after training", "change"], rows)
        lines += [
            "## Retained: general data (evaluation.retain)",
            "",
            RETAIN_NOTE,
            "",
            markdown_table(["metric", "before training", "after training", "change"], rows),
        ]
    report = run_dir.path / "report.md"
    if lines and report.exists():
        run_dir.write_text(
            "report.md", report.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + "\n".join(lines)
        )


MIXTURE_NOTE = (
    "Each epoch draws as many task rows as the sources hold together, each from a source with "
    "probability equal to its weight, plus replay rows at their ratio; the draw is seeded and made "
    "once per run. Losses are the final model's on the rows named under *measured on*."
)
RETAIN_NOTE = (
    "The model on general rows before and after training: a rising loss (or falling accuracy) "
    "is what fine-tuning made it forget."
)
