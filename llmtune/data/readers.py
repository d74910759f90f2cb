"""Reading rows for every job: files and globs, column mapping, splits, limits, bad rows.

Files are read here rather than through `datasets.load_dataset` for one reason: a row that cannot
be read must be reported with its file and line, which the datasets loaders do not do. Parquet
and `save_to_disk` folders go through pyarrow / datasets, which have no line numbers to report.
"""

from __future__ import annotations

import csv
import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput, Problem
from llmtune.recipes.common import Data, RecipeBase

Row = dict[str, Any]
FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")


@dataclass
class Rows:
    """Rows of one split with where each came from ("file:line"), and how many were skipped."""

    rows: list[Row] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, indices: list[int]) -> Rows:
        return Rows([self.rows[i] for i in indices], [self.where[i] for i in indices])


@dataclass
class Splits:
    """train / validation / test rows after mapping, splitting and limiting."""

    train: Rows
    validation: Rows
    test: Rows
    files: list[Path] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}

    def skipped(self) -> int:
        """Unreadable rows skipped in all splits (data.skip_bad_rows)."""
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
        elif resolved.is_dir() and (resolved / "dataset_info.json").exists():
            files.append(resolved)
        elif resolved.is_file():
            files.append(resolved)
        else:
            raise BadInput(f"data file not found: {resolved}", file=_src(recipe), key=key)
    for path in files:
        if not path.is_dir() and path.suffix.lower() not in FORMATS:
            raise BadInput(
                f"unsupported file type {path.suffix!r} ({path}); expected one of "
                f"{' '.join(FORMATS)} or a save_to_disk folder",
                file=_src(recipe),
                key=key,
            )
    return files


def _src(recipe: RecipeBase) -> str | None:
    return str(recipe.source) if recipe.source else None


def read_file(
    path: Path, skip_bad_rows: bool, columns: dict[str, str] | None = None, required: tuple[str, ...] = ()
) -> Rows:
    """Rows of one file, columns mapped; the first bad row (in file order) raises BadInput with
    file:line unless `skip_bad_rows`, which skips and counts it."""
    out = Rows()
    for where, row, problem in _iter_file(path):
        if problem is None and not isinstance(row, dict):
            problem = f"expected a JSON object per row, got {type(row).__name__}"
        if problem is None:
            row = map_columns(row, columns or {})
            missing = [f for f in required if row.get(f) in (None, "")]
            if missing:
                problem = f"row has no {_describe(missing, columns or {})}"
        if problem is not None:
            if not skip_bad_rows:
                raise BadInput(f"{problem} (set data.skip_bad_rows: true to skip such rows)", file=where)
            out.skipped += 1
            continue
        out.rows.append(row)
        out.where.append(where)
    return out


def _iter_file(path: Path):
    suffix = path.suffix.lower()
    if path.is_dir():
        import datasets

        for i, row in enumerate(datasets.load_from_disk(str(path))):
            yield f"{path}[{i}]", dict(row), None
    elif suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{n}", json.loads(line), None
                except json.JSONDecodeError as exc:
                    yield f"{path}:{n}", None, f"invalid JSON: {exc.msg} at column {exc.colno}"
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            yield f"{path}:{exc.lineno}", None, f"invalid JSON: {exc.msg}"
            return
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            yield f"{path}:1", None, 'expected a JSON list of rows (or {"data": [...]})'
            return
        for i, row in enumerate(data):
            yield f"{path}[{i}]", row, None
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row or any(v is None for v in row.values()):
                    yield where, None, "wrong number of columns"
                else:
                    yield where, dict(row), None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}[{i}]", row, None
    elif suffix == ".txt":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{n}", {"text": line.rstrip("\n")}, None


def read_rows(
    recipe: RecipeBase,
    spec: str | list[str],
    key: str,
    *,
    columns: dict[str, str],
    required: tuple[str, ...] = (),
    skip_bad_rows: bool = False,
) -> tuple[Rows, list[Path]]:
    """Read a split's files, map columns to canonical fields and check required fields."""
    files = expand_files(recipe, spec, key)
    out = Rows()
    for path in files:
        part = read_file(path, skip_bad_rows, columns, required)
        out.skipped += part.skipped
        out.rows.extend(part.rows)
        out.where.extend(part.where)
    if not out.rows:
        raise BadInput(f"no usable rows in {', '.join(str(f) for f in files)}", file=_src(recipe), key=key)
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


def load_splits(
    recipe: RecipeBase, data: Data, *, required: tuple[str, ...] = (), label_field: str | None = None
) -> Splits:
    """train/validation/test rows: read, carve missing splits from train, apply `limit`."""
    read = {}
    files: list[Path] = []
    for name in ("train", "validation", "test"):
        spec = getattr(data, name)
        if spec is None:
            read[name] = Rows()
            continue
        rows, used = read_rows(
            recipe,
            spec,
            f"data.{name}",
            columns=data.columns,
            required=required,
            skip_bad_rows=data.skip_bad_rows,
        )
        read[name] = rows
        files.extend(used)
    train = read["train"]
    total = len(train)
    if data.split is not None:
        for name in ("validation", "test"):
            fraction = getattr(data.split, name)
            if fraction and not read[name].rows:  # fractions are of all train rows
                held = round(total * fraction)
                train, read[name] = carve(train, held, data.split.seed, label_field, f"data.split.{name}")
    splits = Splits(train, read["validation"], read["test"], files)
    if data.limit is not None:
        for name in ("train", "validation", "test"):
            rows = getattr(splits, name)
            setattr(splits, name, rows.subset(list(range(min(data.limit, len(rows))))))
    return splits


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
    return rows.subset(sorted(keep)), rows.subset(sorted(held))


def check_labels(splits: Splits, labels: list[str], label_field: str = "label") -> None:
    """Refuse rows whose label is not one of `labels`, naming the first such row."""
    allowed = set(labels)
    for name in ("train", "validation", "test"):
        rows: Rows = getattr(splits, name)
        bad = [(r, w) for r, w in zip(rows.rows, rows.where) if str(r[label_field]) not in allowed]
        if bad:
            row, where = bad[0]
            problems = [
                Problem(
                    f"label {str(row[label_field])!r} is not in labels "
                    f"{labels} ({len(bad)} such row(s) in {name})",
                    file=where,
                )
            ]
            raise BadInput(problems=problems)


def infer_labels(rows: Rows, label_field: str = "label") -> list[str]:
    """Label names found in the rows, sorted so that runs agree whatever the row order."""
    return sorted({str(r[label_field]) for r in rows.rows})
