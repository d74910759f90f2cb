"""The teacher-vs-student report of the regression and causal_lm strategies: the same shape as
classification's (`compare.py`: parameters, size on disk, speed measured on the same test rows,
test metrics, the share of the teacher's quality kept, the gold-only baseline), with each task's
own metrics and its own measure of "quality kept" (named in the report and in eval.json)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.console import markdown_table, say, table
from llmtune.jobs.distill.compare import disk_sizes, ratio, report_head, write_comparison
from llmtune.recipes.distill import DistillRecipe
from llmtune.runs.job import Metrics, Outcome, warnings_markdown
from llmtune.runs.rundir import RunDir


@dataclass
class Measures:
    """What a task compares: its metric columns, the metric whose student/teacher ratio is the
    quality kept (and why), and the speed columns its measurement gives."""

    metrics: tuple[str, ...]
    kept_by: str
    kept_why: str
    speed: tuple[str, ...] = ("ms_per_row", "rows_per_s")
    speed_note: str = ""


def side_by_side(
    recipe: DistillRecipe,
    sizes: dict[str, int],
    results: dict[str, Metrics | None],
    speed: dict[str, dict[str, Any]],
    student_folder: Path,
    measures: Measures,
) -> dict[str, Any]:
    """The comparison that eval.json, report.md and the summary show. `results`: test metrics of
    teacher, student and (None when skipped) baseline; `speed`: per model, the measured columns."""
    teacher_disk, student_disk = disk_sizes(recipe, student_folder)
    disks = {"teacher": teacher_disk, "student": student_disk, "baseline": None}
    teacher_quality = results["teacher"] and results["teacher"].get(measures.kept_by)
    out: dict[str, Any] = {}
    for name in ("teacher", "student", "baseline"):
        metrics = results.get(name)
        if metrics is None:
            out[name] = None
            continue
        params = sizes["teacher_params" if name == "teacher" else "student_params"]
        disk = disks[name]
        timing = speed.get(name, {})
        out[name] = {
            "params": params,
            "size_mb": round(disk / 2**20, 2) if disk is not None else None,
            **{k: timing.get(k) for k in measures.speed},
            **{k: _rounded(metrics.get(k)) for k in measures.metrics},
            "quality_kept": ratio(metrics.get(measures.kept_by), teacher_quality),
        }
    first_speed = measures.speed[-1]
    student, teacher = speed["student"], speed["teacher"]
    out.update(
        size_ratio=ratio(sizes["student_params"], sizes["teacher_params"]),
        disk_ratio=ratio(student_disk, teacher_disk),
        speedup=ratio(student.get(first_speed), teacher.get(first_speed)),
        speedup_by=first_speed,
        quality_kept=out["student"]["quality_kept"],
        quality_kept_by=measures.kept_by,
        measured_on={k: teacher.get(k) for k in ("rows", "batch_size", "threads")},
    )
    return out


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _rows(comparison: dict[str, Any], measures: Measures) -> list[list[Any]]:
    rows = []
    for name in ("teacher", "student", "baseline"):
        e = comparison.get(name)
        if e:
            shown = "student on gold data only" if name == "baseline" else name
            values = [e[k] for k in (*measures.speed, *measures.metrics)]
            rows.append([shown, e["params"], e["size_mb"], *values, percent(e["quality_kept"])])
    return rows


def percent(share: float | None) -> str:
    """A share of the teacher's quality as the headline says it: `96.3%`."""
    return "-" if share is None else f"{100 * share:.1f}%"


def columns(measures: Measures) -> list[str]:
    """The table's header."""
    named = [k.replace("_per_", "/").replace("_", " ") for k in (*measures.speed, *measures.metrics)]
    return ["model", "parameters", "size MB", *named, f"share of teacher {measures.kept_by}"]


def headline(comparison: dict[str, Any]) -> str:
    """One sentence: what the student keeps at what size and speed."""
    kept = comparison["quality_kept"]
    kept_text = f"{100 * kept:.1f}%" if kept is not None else "an unmeasurable share"
    return (
        f"the student keeps {kept_text} of the teacher's test {comparison['quality_kept_by']} "
        f"with {100 * (comparison['size_ratio'] or 0):.1f}% of its parameters at "
        f"{comparison['speedup'] or 0:.2f}x its {comparison['speedup_by'].replace('_per_', '/')}"
    )


def report(
    recipe: DistillRecipe,
    run_dir: RunDir,
    outcome: Outcome,
    comparison: dict[str, Any],
    measures: Measures,
    extra: dict[str, Any],
    notes: list[str],
) -> None:
    """Terminal table, report.md, eval.json (the lifecycle's keys plus `extra` and the
    comparison), and the comparison in the run's summary (--json)."""
    header, rows = columns(measures), _rows(comparison, measures)
    table("teacher vs student (test split)", header, rows)
    say(headline(comparison))
    write_comparison(run_dir, outcome, comparison, extra)
    settings = f"temperature {recipe.temperature}, alpha {recipe.alpha}, beta {recipe.beta}"
    lines = [
        *report_head(recipe, outcome, headline(comparison), settings),
        f"- quality kept: {measures.kept_why}",
        *[f"- {note}" for note in notes],
        *([f"- speed: {measures.speed_note}"] if measures.speed_note else []),
        "",
        *warnings_markdown(outcome),
        "## Teacher vs student",
        "",
        markdown_table(header, rows),
    ]
    run_dir.write_text("report.md", "\n".join(lines))
