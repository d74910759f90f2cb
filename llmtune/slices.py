"""Fairness slices and quality gates, shared by every job that measures a test set.

Bias in data becomes bias in the model, and an average hides it. `slice_metrics` measures every
metric once per value of each slice column (e.g. `language`), with the row counts and the gap
between the best and the worst slice; the job supplies its own metric function, so a slice's
numbers are exactly what the job reports, computed on that slice's rows alone.

A quality gate (`--fail-under`, prompt-eval's `fail_under:`) takes three forms:

    f1=0.8                 the metric over all rows
    f1@language=0.8        every language slice (that is: the worst one)
    f1@language=de=0.8     the language=de slice alone

Gates are parsed and checked against the recipe (known metric, higher is better, a column that is
one of the recipe's slices) before any model loads, and measured after the job ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llmtune.errors import BadInput
from llmtune.metrics import lower_is_better

# for metrics where a lower value is better (metrics.lower_is_better) the worst slice is the
# highest, and a --fail-under gate on them would read backwards, so gates refuse them
GATE_KEY = "--fail-under"
GATE_FORMS = "METRIC=VALUE, METRIC@COLUMN=VALUE or METRIC@COLUMN=SLICE=VALUE (e.g. f1@language=de=0.8)"

SliceReport = dict[str, Any]  # one column: {"values": {...}, "gap": {...}, "worst": {...}, "best": {...}}


def check_slice_columns(
    rows: list[dict[str, Any]], where: list[str], columns: list[str], *, key: str = "evaluation.slices"
) -> None:
    """Refuse rows without a value for a slice column, naming the first such row (its file:line).

    A null value is refused too: a group the data cannot name cannot be compared. A column with a
    single value is accepted (its one slice is the whole set, the gap 0)."""
    for column in columns:
        for row, place in zip(rows, where, strict=True):
            if row.get(column) is None:
                state = "has no" if column not in row else "has a null"
                raise BadInput(
                    f"the row {state} {column!r} column, which is a slice column; every scored row "
                    f"needs a value for it (or remove {column!r} from {key})",
                    file=place,
                    key=key,
                )


def slice_values(rows: list[dict[str, Any]], column: str) -> dict[str, list[int]]:
    """Row indices per value of `column` (values as text), in sorted order of the values."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(str(row[column]), []).append(i)
    return dict(sorted(groups.items()))


def slice_metrics(
    rows: list[dict[str, Any]],
    columns: list[str],
    compute: Callable[[list[int]], dict[str, Any]],
) -> dict[str, SliceReport]:
    """Every metric per value of each column: `compute(indices)` is the task's own metric function
    on those rows. Returns {column: {"values": {value: {"n", metric...}}, "gap": {metric: best -
    worst, as a distance}, "worst": {metric: value}, "best": {metric: value}}}.

    Only numeric metrics are kept per slice (per-class tables and confusion matrices stay with the
    overall metrics); a metric that is undefined on a slice (NaN, e.g. a correlation on constant
    labels) is null there and left out of the gap."""
    out: dict[str, SliceReport] = {}
    for column in columns:
        values = {}
        for value, indices in slice_values(rows, column).items():
            measured = {k: _number(v) for k, v in compute(indices).items() if _is_number(v)}
            values[value] = {**measured, "n": len(indices)}
        out[column] = {"values": values, **_extremes(values)}
    return out


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) or value is None


def _number(value: float | int | None) -> float | int | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _extremes(values: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The best and worst slice per float metric, and the distance between them."""
    metrics = [m for m in next(iter(values.values()), {}) if m != "n"]
    gap, worst, best = {}, {}, {}
    for metric in metrics:
        measured = {v: s[metric] for v, s in values.items() if isinstance(s.get(metric), float | int)}
        if not measured:
            continue
        sign = -1 if lower_is_better(metric) else 1
        # ties go to the first value in sorted order, so the report is stable
        worst[metric] = min(measured, key=lambda v: sign * measured[v])
        best[metric] = max(measured, key=lambda v: sign * measured[v])
        gap[metric] = abs(measured[best[metric]] - measured[worst[metric]])
    return {"gap": gap, "worst": worst, "best": best}


def slices_markdown(slices: dict[str, SliceReport], *, level: int = 2) -> str:
    """report.md's section per slice column: value, n and each metric, then the gap and the worst
    slice per metric."""
    from llmtune.console import markdown_table

    lines: list[str] = []
    for column, report in slices.items():
        values = report["values"]
        metrics = [m for m in next(iter(values.values()), {}) if m != "n"]
        lines += [f"{'#' * level} Slices by `{column}`", ""]
        rows = [[value, s["n"], *[_cell(s.get(m)) for m in metrics]] for value, s in values.items()]
        lines.append(markdown_table([column, "n", *metrics], rows))
        if len(values) == 1:
            lines += [f"Only one value of `{column}` in these rows: nothing to compare.", ""]
            continue
        parts = [
            f"{m} {report['gap'][m]:.4f} (worst: {report['worst'][m]}, best: {report['best'][m]})"
            if report["gap"][m]
            else f"{m} 0 (every slice equal)"
            for m in metrics
            if m in report["gap"]
        ]
        lines += [f"Gap between the best and the worst slice: {'; '.join(parts)}.", ""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Gate:
    """One quality gate: a metric over all rows, over every slice of a column, or over one slice."""

    metric: str
    threshold: float
    column: str | None = None
    slice: str | None = None  # None with a column: every slice must reach it (the worst one)

    @property
    def target(self) -> str:
        """The gate without its threshold (f1, f1@language, f1@language=de): what it measures."""
        if self.column is None:
            return self.metric
        return f"{self.metric}@{self.column}" + (f"={self.slice}" if self.slice is not None else "")

    def measure(
        self, metrics: dict[str, Any], slices: dict[str, SliceReport] | None
    ) -> tuple[float | None, str]:
        """The measured value (None when it was not measured) and what it is, in words."""
        if self.column is None:
            return _float(metrics.get(self.metric)), self.metric
        report = (slices or {}).get(self.column)
        if report is None:
            return None, f"{self.metric} of the {self.column} slices"
        if self.slice is not None:
            stats = report["values"].get(self.slice)
            what = f"{self.metric} of slice {self.column}={self.slice}"
            if stats is None:
                return None, f"{what} (no scored row has {self.column}={self.slice})"
            return _float(stats.get(self.metric)), f"{what} ({stats['n']} rows)"
        worst = report["worst"].get(self.metric)
        if worst is None:
            return None, f"{self.metric} of the {self.column} slices"
        stats = report["values"][worst]
        what = (
            f"{self.metric} of slice {self.column}={worst} (the worst {self.column} slice, {stats['n']} rows)"
        )
        return _float(stats[self.metric]), what


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_gate(text: str) -> Gate:
    """One gate from its text (METRIC=VALUE, METRIC@COLUMN=VALUE, METRIC@COLUMN=SLICE=VALUE);
    ValueError saying the expected forms."""
    target, sep, number = text.rpartition("=")
    try:
        threshold = float(number)
    except ValueError:
        threshold = math.nan
    if not sep or not target.strip() or not math.isfinite(threshold):
        raise ValueError(f"expected {GATE_FORMS}, got {text!r}")
    metric, at, where = (part.strip() for part in target.partition("@"))
    if not at:
        return Gate(metric, threshold)
    column, eq, value = (part.strip() for part in where.partition("="))
    if not metric or not column or (eq and not value):
        raise ValueError(f"expected {GATE_FORMS}, got {text!r}")
    return Gate(metric, threshold, column, value if eq else None)


def check_gate(gate: Gate, metrics: Sequence[str], slices: Sequence[str]) -> None:
    """Refuse a gate on a metric the job does not compute, on a lower-is-better metric, or on a
    column that is not one of the recipe's slices (ValueError)."""
    if lower_is_better(gate.metric):
        raise ValueError(
            f"cannot gate on {gate.metric!r}: lower is better, and --fail-under fails when a value is "
            f"below its threshold; gate on one of {', '.join(_gateable(metrics))}"
        )
    if gate.metric not in metrics:
        raise ValueError(f"cannot gate on {gate.metric!r}; expected one of {', '.join(_gateable(metrics))}")
    if gate.column is not None and gate.column not in slices:
        known = f"the recipe's slices are {list(slices)}" if slices else "the recipe has no slices"
        raise ValueError(
            f"{gate.target}: {gate.column!r} is not a slice column ({known}); add it to the slices"
        )


def _gateable(metrics: Iterable[str]) -> list[str]:
    return [m for m in metrics if not lower_is_better(m)]


def recipe_gates(gates: dict[str, float], metrics: Sequence[str], slices: Sequence[str]) -> list[Gate]:
    """A recipe's `fail_under: {target: threshold}` as gates, each checked (ValueError, so that the
    recipe loader names the file and line)."""
    out = []
    for target, threshold in gates.items():
        gate = parse_gate(f"{target}={threshold}")
        check_gate(gate, metrics, slices)
        out.append(gate)
    return out


def parse_gates(
    flags: list[str],
    metrics: Sequence[str],
    slices: Sequence[str],
    *,
    defaults: dict[str, float] | None = None,
) -> list[Gate]:
    """The gates of a run: `defaults` (a recipe's fail_under) overridden, target by target, by each
    --fail-under flag. BadInput (key --fail-under, exit 2) for a malformed or impossible gate."""
    gates = {g.target: g for g in recipe_gates(defaults or {}, metrics, slices)}
    for flag in flags:
        try:
            gate = parse_gate(flag)
            check_gate(gate, metrics, slices)
        except ValueError as exc:
            raise BadInput(str(exc), key=GATE_KEY) from None
        gates[gate.target] = gate
    return list(gates.values())


Measured = tuple[dict[str, Any], dict[str, SliceReport] | None]


def gate_failures(gates: list[Gate], candidates: dict[str, Measured], when: str = "any") -> list[str]:
    """One line per gate that is not met. `candidates` maps a name ("pair base x zero_shot", "the
    test split") to its (metrics, slices). when="any": every candidate must pass; "best": the
    gate fails only when even the best candidate on that gate is below. A gate that could not be
    measured fails: CI must not pass on a number nobody computed."""
    failures = []
    for gate in gates:
        measured = {name: gate.measure(*found) for name, found in candidates.items()}
        chosen = list(measured.items())
        if when == "best" and len(chosen) > 1:
            best = max(chosen, key=lambda item: -math.inf if item[1][0] is None else item[1][0])
            chosen = [(f"best {best[0]}", best[1])]
        for name, (value, what) in chosen:
            if value is None:
                failures.append(f"{what} of {name} was not measured; cannot check {gate.target}")
            elif value < gate.threshold:
                failures.append(f"{what} of {name} is {value:.4f}, below {gate.threshold:g}")
    return failures


def gates_summary(gates: list[Gate], failures: list[str], when: str | None = None) -> dict[str, Any]:
    """The gate's verdict as it goes into a summary (--json)."""
    out: dict[str, Any] = {"thresholds": {g.target: g.threshold for g in gates}}
    if when is not None:
        out["when"] = when
    return {**out, "passed": not failures, "failures": failures}
