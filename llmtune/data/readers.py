"""Reading rows for every job: files and globs, column mapping, bad rows, and carving held-out
rows from train. A recipe's whole data section is read by `llmtune.data.splits`.

Files are read here rather than through `datasets.load_dataset` because a row that cannot be read
must be reported with its file and line. Parquet and `save_to_disk` folders go through pyarrow /
datasets, which have no line numbers to report.

What `data.skip_bad_rows` covers: bad rows (invalid JSON or UTF-8 on its line, not an object,
nested too deeply, a required field missing or empty, a CSV row with the wrong number of columns,
a label not in `labels`) are all reported at once (20, then a count) with exit 2, or skipped and
counted. Bad files (empty, not UTF-8, not a JSON list, unreadable parquet, a CSV field past the
csv module's limit, a column that no row has: a wrong `columns` mapping) are always exit 2.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.data.formats import iter_file, kind_of
from llmtune.data.problems import SKIP_HINT, closest, refuse
from llmtune.errors import BadInput, Problem
from llmtune.recipes.common import Data, RecipeBase

Row = dict[str, Any]
FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class Rows:
    """Rows of one split with where each came from ("file:line"), and how many were skipped."""

    rows: list[Row] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, indices: list[int], skipped: int = 0) -> Rows:
        return Rows([self.rows[i] for i in indices], [self.where[i] for i in indices], skipped)


@dataclass
class Splits:
    """train / validation / test rows after mapping, splitting and limiting."""

    train: Rows
    validation: Rows
    test: Rows
    files: list[Path] = field(default_factory=list)
    skip_bad_rows: bool = False  # the data's policy, so that later row checks follow it too
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Mixtures and replay: per source, its weight (or replay ratio), rows and rows drawn."""
    retain: Rows = field(default_factory=Rows)
    """evaluation.retain: general rows measured before and after training."""

    def counts(self) -> dict[str, int]:
        counts = {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}
        return {**counts, "retain": len(self.retain)} if self.retain.rows else counts

    def skipped(self) -> int:
        """Bad rows skipped in all splits (data.skip_bad_rows)."""
        return self.train.skipped + self.validation.skipped + self.test.skipped


def expand_files(recipe: RecipeBase, spec: str | list[str], key: str) -> list[Path]:
    """Resolve a file, glob or list (relative to the recipe) into existing files."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    files: list[Path] = []
    for pattern in patterns:
        resolved = recipe.resolve_path(pattern)
        if any(ch in pattern for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(resolved), recursive=True))
            if not matches:
                raise BadInput(f"no file matches {resolved}", file=_src(recipe), key=key)
            files.extend(matches)
        elif resolved.is_file() or (resolved / "dataset_info.json").is_file():  # a save_to_disk folder
            files.append(resolved)
        else:
            raise BadInput(f"data file not found: {resolved}", file=_src(recipe), key=key)
    for path in files:
        if not path.is_dir() and path.suffix.lower() not in FORMATS:
            expected = f"expected one of {' '.join(FORMATS)} or a save_to_disk folder"
            raise BadInput(
                f"unsupported file type {path.suffix!r} ({path}); {expected}", file=_src(recipe), key=key
            )
    return files


def _src(recipe: RecipeBase) -> str | None:
    return str(recipe.source) if recipe.source else None


def read_file(path: Path, skip_bad_rows: bool, columns: dict[str, str] | None = None) -> Rows:
    """Rows of one file, columns mapped. Bad rows raise one BadInput listing all of them, unless
    `skip_bad_rows`, which counts them (`Rows.skipped`)."""
    rows, bad = scan_file(path, columns or {}, ())
    if bad and not skip_bad_rows:
        refuse(bad)
    rows.skipped = len(bad)
    return rows


def scan_file(path: Path, columns: dict[str, str], required: tuple[str, ...]) -> tuple[Rows, list[Problem]]:
    """The good rows of one file (columns mapped) and a problem for each bad row. A bad file, or
    a required column that no row has, raises BadInput at once."""
    out, bad = Rows(), []
    seen: dict[str, None] = {}  # the file's columns, in order of first appearance
    present = dict.fromkeys(required, 0)
    first = None  # the first row read, named when a column is missing from every row
    for where, row, problem in iter_file(path):
        if problem is None and not isinstance(row, dict):
            problem = f"expected a JSON object per row, got {kind_of(row)}"
        if problem is None:
            first = first or where
            seen.update(dict.fromkeys(map(str, row)))
            for name in required:
                present[name] += columns.get(name, name) in row or name in row
            row = map_columns(row, columns)
            missing = [f for f in required if row.get(f) in (None, "")]
            if missing:
                problem = f"row has no {_describe(missing, columns)}"
        if problem is not None:
            bad.append(Problem(problem, file=where))
            continue
        out.rows.append(row)
        out.where.append(where)
    absent = [name for name in required if seen and not present[name]]
    if "id" in columns and seen and columns["id"] not in seen:  # a mapped id column no row has
        absent.append("id")
    if absent:  # a wrong mapping, not bad rows: skipping would skip every row; all named at once
        raise BadInput(
            problems=[Problem(_no_such_column(a, columns, list(seen)), file=first) for a in absent]
        )
    return out, bad


def _no_such_column(name: str, columns: dict[str, str], seen: list[str]) -> str:
    column = columns.get(name, name)
    what = f"column {column!r} (mapped to {name})" if name in columns else f"{name!r} column"
    listed = ", ".join(seen[:30]) + (f" and {len(seen) - 30} more" if len(seen) > 30 else "")
    message = f"no row has a {what}; the file's columns are: {listed}"
    near = closest(column, seen)
    if near is not None:
        return f"{message}; did you mean {near!r}? (data.columns: {{{name}: {near}}})"
    return f"{message}; map the right one with data.columns: {{{name}: COLUMN}}"


def read_rows(
    recipe: RecipeBase,
    spec: str | list[str],
    key: str,
    *,
    columns: dict[str, str],
    required: tuple[str, ...] = (),
    skip_bad_rows: bool = False,
) -> tuple[Rows, list[Path]]:
    """Read a split's files, map columns to canonical fields and check required fields; the bad
    rows of all the files are reported together."""
    files = expand_files(recipe, spec, key)
    out, bad = Rows(), []
    for path in files:
        part, problems = scan_file(path, columns, required)
        bad += problems
        out.rows.extend(part.rows)
        out.where.extend(part.where)
    if bad and not skip_bad_rows:
        refuse(bad, f"{len(bad)} bad row(s): {SKIP_HINT}" if out.rows else None)
    out.skipped = len(bad)
    if not out.rows:
        skipped = f" ({len(bad)} bad row(s) skipped)" if bad else ""
        raise BadInput(f"no usable rows in {', '.join(map(str, files))}{skipped}", file=_src(recipe), key=key)
    return out, files


def _describe(fields: list[str], columns: dict[str, str]) -> str:
    return ", ".join(f"'{columns[f]}' (mapped to {f})" if f in columns else f"'{f}'" for f in fields)


def map_columns(row: Row, columns: dict[str, str]) -> Row:
    """A copy of `row` where each canonical field also holds its mapped column's value."""
    mapped = dict(row)
    for canonical, column in columns.items():
        if column in row:
            mapped[canonical] = row[column]
    return mapped


def carve_missing(
    train: Rows, held: dict[str, Rows], data: Data, label_field: str | None, source: str | None = None
) -> Rows:
    """Carve data.split's fractions (of all `train` rows) for the splits not given as files, into
    `held`. A source of a mixture too small to give a row gives none (the others may)."""
    if data.split is None:
        return train
    total = len(train)
    for name in ("validation", "test"):
        fraction = getattr(data.split, name)
        if not fraction or getattr(data, name) is not None:
            continue
        n_held = round(total * fraction)
        if source is not None and n_held == 0:
            continue
        key = f"data.split.{name}" + (f" ({source})" if source else "")
        train, out = carve(train, n_held, data.split.seed, label_field, key)
        held[name].rows.extend(out.rows)
        held[name].where.extend(out.where)
    return train


def carve(rows: Rows, n_held: int, seed: int, label_field: str | None, what: str) -> tuple[Rows, Rows]:
    """Split `n_held` rows off, stratified by label when every label has two rows."""
    from sklearn.model_selection import train_test_split

    if n_held < 1 or n_held >= len(rows):
        raise BadInput(f"holding out {n_held} of {len(rows)} rows leaves an empty split", key=what)
    labels = [str(r.get(label_field)) for r in rows.rows] if label_field else None
    stratify = None
    if labels is not None:
        counts = {label: labels.count(label) for label in set(labels)}
        if min(counts.values()) >= 2 and n_held >= len(counts) and len(rows) - n_held >= len(counts):
            stratify = labels
    keep, held = train_test_split(
        list(range(len(rows))), test_size=n_held, random_state=seed, stratify=stratify
    )
    return rows.subset(sorted(keep), rows.skipped), rows.subset(sorted(held))
