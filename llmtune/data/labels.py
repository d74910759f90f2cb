"""Labels of classification rows: inferred from the training rows, or checked against the
recipe's `labels`, where a typo in `labels` (a whole class missing) is told apart from a few rows
with a misspelled label (which `data.skip_bad_rows` may skip)."""

from __future__ import annotations

from llmtune.data.problems import SKIP_HINT, closest, refuse
from llmtune.data.readers import SPLIT_NAMES, Rows, Splits
from llmtune.errors import Problem


def check_labels(splits: Splits, labels: list[str], label_field: str = "label") -> None:
    """A row whose label is not one of `labels` is a bad row, with a "did you mean" for a near
    label (same but for case first, then difflib). With `splits.skip_bad_rows` (data.skip_bad_rows)
    such rows are removed in place and counted in `Rows.skipped`, unless a split would be left
    empty or a whole class is missing from `labels` (skipping would silently drop it); otherwise
    every one is reported at once (exit 2), and the hint says to fix `labels` when that is the cause."""
    bad: list[Problem] = []
    hint = SKIP_HINT
    missing_classes = _missing_classes(splits, labels, label_field)
    for name in (*SPLIT_NAMES, "retain"):  # retain rows are scored by the same head
        rows: Rows = getattr(splits, name)
        values = [str(r.get(label_field)) for r in rows.rows]
        good = [i for i, value in enumerate(values) if value in labels]
        problems = [
            Problem(_label_problem(v, labels), file=w) for v, w in zip(values, rows.where) if v not in labels
        ]
        if not problems:
            continue
        if not good:  # skipping cannot help: the labels are wrong, not a few rows
            hint = f"no {name} row has a label in labels {labels}: check `labels` and data.columns"
        elif splits.skip_bad_rows and not missing_classes:
            rows.rows[:], rows.where[:] = [rows.rows[i] for i in good], [rows.where[i] for i in good]
            rows.skipped += len(problems)
            continue
        bad += problems
    if bad and missing_classes and hint == SKIP_HINT:  # some rows fit: name the classes missing
        hint = _fix_labels_hint(missing_classes, labels, splits, label_field)
    if bad:
        refuse(bad, f"{len(bad)} bad row(s): {hint}")


# a label value on at least this many training rows is a class of its own, not a typo in a row
WHOLE_CLASS = 3


def _missing_classes(splits: Splits, labels: list[str], label_field: str) -> dict[str, int]:
    """Label values missing from `labels` that are whole classes: the near spelling of a listed
    label that no training row has (a typo in `labels`), or on WHOLE_CLASS or more training rows
    and near no listed label (a class `labels` leaves out). A value near a label the rows do use
    ('biling' beside 'billing') is a typo in those rows."""
    counts: dict[str, int] = {}
    for row in splits.train.rows:
        value = str(row.get(label_field))
        counts[value] = counts.get(value, 0) + 1
    unused = [label for label in labels if label not in counts]
    return {
        value: n
        for value, n in counts.items()
        if value not in labels
        and (closest(value, unused) is not None or (n >= WHOLE_CLASS and closest(value, labels) is None))
    }


def _fix_labels_hint(missing: dict[str, int], labels: list[str], splits: Splits, label_field: str) -> str:
    present = {str(r.get(label_field)) for r in splits.train.rows}
    unused = [label for label in labels if label not in present]
    fixes = []
    for value, n in missing.items():
        near = closest(value, unused)
        change = f"change {near!r} to {value!r}" if near else f"add {value!r}"
        fixes.append(f"{value!r} is a whole class ({n} training rows) that labels does not list: {change}")
    return (
        "; ".join(fixes) + " in labels. Skipping these rows (data.skip_bad_rows) would drop the whole class"
    )


def _label_problem(label: str, labels: list[str]) -> str:
    near = closest(label, labels)
    return f"label {label!r} is not in labels {labels}" + (f"; did you mean {near!r}?" if near else "")


def infer_labels(rows: Rows, label_field: str = "label") -> list[str]:
    """Label names found in the rows, sorted so that runs agree whatever the row order. Names
    that differ only in case are refused: far more often a typo than two classes."""
    first: dict[str, str] = {}  # label -> where it first appears
    for row, where in zip(rows.rows, rows.where):
        first.setdefault(str(row[label_field]), where)
    folded: dict[str, str] = {}
    for name in sorted(first):
        twin = folded.setdefault(name.casefold(), name)
        if twin != name:
            where = [Problem(f"label {n!r} first appears here", file=first[n]) for n in (twin, name)]
            refuse(
                where,
                f"labels {twin!r} and {name!r} differ only in case: fix the data, or list them in labels:",
            )
    return sorted(first)
