"""bulk-infer's files: the append-only journal that resume reads, torn-line repair, shards and
their merge, csv/parquet materialisation, row ids and fingerprints.

Design: every result row is appended to a JSON-lines *journal* in flushed, fsynced chunks. The
journal is the source of truth: a rerun skips the ids it holds, a line torn by a crash is cut
off on the next run, and a row is never written twice. For `output.path: x.jsonl` the journal
is the output itself; csv and parquet cannot be appended safely, so for them the journal is
`x.journal.jsonl` and `x.csv` / `x.parquet` is rewritten atomically from it at the end of a run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.console import say
from llmtune.errors import BadInput
from llmtune.models.loading import resolve_model_path
from llmtune.recipes.bulk_infer import BulkInferRecipe
from llmtune.runs.rundir import OutputLock, atomic_write_text

Record = dict[str, Any]
SHARD_RE = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class OutputPaths:
    """Where one bulk-infer process reads and writes."""

    results: Path
    journal: Path
    errors: Path
    lock: Path
    shard: tuple[int, int] | None = None

    def main_journal(self) -> Path:
        """The unsharded journal (the one --merge-shards writes)."""
        return _journal_for(self.results)


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """`I/N` (0 <= I < N) -> (I, N); None when not sharding."""
    if value is None:
        return None
    match = SHARD_RE.match(value.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise BadInput(f"expected I/N with 0 <= I < N (e.g. 0/4 .. 3/4), got {value!r}", key="--shard")
    return int(match[1]), int(match[2])


def output_paths(
    recipe: BulkInferRecipe, override: Path | None, shard: tuple[int, int] | None
) -> OutputPaths:
    """Results, journal, errors and lock paths; `--output` replaces output.path."""
    results = Path(os.path.normpath(override or recipe.resolve_path(recipe.output.path)))
    if results.suffix.lower() not in (".jsonl", ".csv", ".parquet"):
        raise BadInput(f"expected a .jsonl, .csv or .parquet output file, got {results}", key="--output")
    if recipe.output.errors and not override:
        errors = Path(os.path.normpath(recipe.resolve_path(recipe.output.errors)))
    else:
        errors = results.with_name(f"{results.stem}.errors.jsonl")
    if shard is None:
        journal = _journal_for(results)
        return OutputPaths(results, journal, errors, results.with_name(results.name + ".lock"))
    part = f"shard-{shard[0]}-of-{shard[1]}"
    journal = results.with_name(f"{results.stem}.{part}.jsonl")
    errors = errors.with_name(f"{errors.stem}.{part}.jsonl")
    return OutputPaths(results, journal, errors, journal.with_name(journal.name + ".lock"), shard)


def _journal_for(results: Path) -> Path:
    return (
        results if results.suffix.lower() == ".jsonl" else results.with_name(f"{results.stem}.journal.jsonl")
    )


def in_shard(row_id: str, shard: tuple[int, int] | None) -> bool:
    """Stable assignment of an id to one of N shards (same on every machine and run)."""
    if shard is None:
        return True
    digest = hashlib.sha256(row_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shard[1] == shard[0]


def row_id(row: Record, id_column: str | None) -> str | None:
    """The row's id: its id column as text, or a hash of its content."""
    if id_column is not None:
        value = row.get(id_column)
        return None if value is None or value == "" else str(value)
    text = json.dumps(row, sort_keys=True, default=str, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- fingerprints
def model_fingerprint(recipe: BulkInferRecipe) -> str:
    """Changes when the weights or how they are loaded change (not the device)."""
    ref = recipe.model
    digest = hashlib.sha256(json.dumps(ref.model_dump(exclude={"device"}), sort_keys=True).encode())
    if ref.scratch is not None:
        digest.update(str(recipe.seed).encode())  # scratch weights come from the seed
    else:
        for folder in _model_folders(recipe):
            _digest_folder(digest, folder)
    return digest.hexdigest()[:16]


def _model_folders(recipe: BulkInferRecipe) -> list[Path]:
    path = Path(resolve_model_path(recipe.model, recipe, "model"))
    folders = [path]
    if recipe.model.adapter:
        folders.append(recipe.resolve_path(recipe.model.adapter))
    return folders


def _digest_folder(digest: Any, folder: Path) -> None:
    # small files whole; big weight files by size plus their first and last MiB (fast for GBs)
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(folder)}:{size}".encode())
        with file.open("rb") as f:
            if size <= 64 << 20:
                digest.update(f.read())
            else:
                digest.update(f.read(1 << 20))
                f.seek(size - (1 << 20))
                digest.update(f.read())


def prompt_fingerprint(recipe: BulkInferRecipe) -> str:
    """Changes when anything that shapes the prompt or the decoding changes."""
    parts: dict[str, Any] = {
        "template": recipe.template,
        "columns": recipe.input.columns,
        "chat": recipe.chat,
        "system": recipe.system,
        "task": recipe.task,
        "max_length": recipe.max_length,
        "on_too_long": recipe.on_too_long,
    }
    if recipe.task == "classify":
        parts["labels"] = recipe.labels
    else:
        parts["generation"] = recipe.generation.model_dump()
        if recipe.generation.temperature > 0:
            parts["seed"] = recipe.seed
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------- journal
def iter_journal(path: Path) -> Iterator[Record]:
    """Complete, valid rows of a journal (a torn or garbled line is passed over)."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return  # torn by a crash; repair_journal cuts it off
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "id" in record:
                yield record


def done_fingerprints(*paths: Path) -> dict[str, tuple[str | None, str | None]]:
    """id -> (model_fingerprint, prompt_fingerprint) of every row already written."""
    done: dict[str, tuple[str | None, str | None]] = {}
    for path in paths:
        for record in iter_journal(path):
            done[str(record["id"])] = (record.get("model_fingerprint"), record.get("prompt_fingerprint"))
    return done


def repair_journal(path: Path) -> int:
    """Cut a torn last line and drop garbled lines; returns how many lines were removed."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = 1 if lines[-1] else 0
    complete = lines[:-1]
    good = [line for line in complete if _valid(line)]
    removed = torn + len(complete) - len(good)
    if removed == torn and torn:
        with path.open("r+b") as f:  # the common case: only the last line; cut in place
            f.truncate(len(data) - len(lines[-1]))
            os.fsync(f.fileno())
    elif removed:
        atomic_write_text(path, "".join(line.decode() + "\n" for line in good))
    return removed


def _valid(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "id" in record


def rewrite_journal(path: Path, keep: Callable[[Record], bool]) -> int:
    """Atomically drop the rows `keep` refuses; returns how many were dropped."""
    records = list(iter_journal(path))
    kept = [r for r in records if keep(r)]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(_line(r) for r in kept))
    return len(records) - len(kept)


def _line(record: Record) -> str:
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


class AppendFile:
    """A JSON-lines file appended to in chunks: each chunk is written, flushed and fsynced
    together, so a crash leaves at most one torn line at the end."""

    def __init__(self, path: Path, *, truncate: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("w" if truncate else "a", encoding="utf-8")

    def append(self, records: list[Record]) -> None:
        if not records:
            return
        self._file.write("".join(_line(r) for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


# -------------------------------------------------------- materialise and merge
def materialise(journal: Path, results: Path) -> None:
    """Write the csv/parquet results file from the journal, atomically (jsonl: nothing to do)."""
    if results == journal:
        return
    records = list({str(r["id"]): r for r in iter_journal(journal)}.values())
    results.parent.mkdir(parents=True, exist_ok=True)
    tmp = results.with_name(f".{results.name}.tmp")
    if results.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), tmp)
    else:
        _write_csv(records, tmp)
    os.replace(tmp, results)


def _write_csv(records: list[Record], path: Path) -> None:
    import csv

    flat = []
    for record in records:
        row: Record = {}
        for key, value in record.items():
            if key == "scores" and isinstance(value, dict):  # one column per label
                row.update({f"score_{label}": p for label, p in value.items()})
            elif isinstance(value, list | dict):
                row[key] = json.dumps(value, ensure_ascii=False)
            else:
                row[key] = value
        flat.append(row)
    columns = list(dict.fromkeys(k for row in flat for k in row))
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)


def shard_parts(paths: OutputPaths) -> list[Path]:
    """Every shard part file beside the results (any N)."""
    parts = _glob_parts(paths.results)
    return sorted(Path(p) for p in parts if re.search(r"\.shard-\d+-of-\d+\.jsonl$", p))


def _glob_parts(path: Path) -> list[str]:
    pattern = os.path.join(glob.escape(str(path.parent)), glob.escape(path.stem) + ".shard-*-of-*.jsonl")
    return glob.glob(pattern)


def merge_shards(paths: OutputPaths) -> dict[str, Any]:
    """Join the shard part files into the main journal (each id once, newest wins), then the
    results file and the errors file. Part files stay, so the next sharded run resumes."""
    parts = shard_parts(paths)
    if not parts:
        raise BadInput(f"no shard part files beside {paths.results} (run with --shard I/N first)")
    journal = paths.main_journal()
    merged: dict[str, Record] = {str(r["id"]): r for r in iter_journal(journal)}
    before = len(merged)
    for part in parts:
        merged.update({str(r["id"]): r for r in iter_journal(part)})
    atomic_write_text(journal, "".join(_line(r) for r in merged.values()))
    materialise(journal, paths.results)
    error_parts = sorted(_glob_parts(paths.errors))
    error_lines = [line for p in error_parts for line in Path(p).read_text(encoding="utf-8").splitlines(True)]
    atomic_write_text(paths.errors, "".join(error_lines))
    counts = sorted({int(m[1]) for p in parts if (m := re.search(r"-of-(\d+)\.jsonl$", p.name))})
    present = {(int(m[1]), int(m[2])) for p in parts if (m := re.search(r"shard-(\d+)-of-(\d+)", p.name))}
    missing = [f"{i}/{n}" for n in counts for i in range(n) if (i, n) not in present]
    return {
        "merged_parts": [str(p) for p in parts],
        "rows": len(merged),
        "new_rows": len(merged) - before,
        "failed_rows": len(error_lines),
        "missing_shards": missing,
        "output": str(paths.results),
        "errors_file": str(paths.errors),
    }


def merge_command(paths: OutputPaths, shard: tuple[int, int] | None, *, dry_run: bool) -> dict[str, Any]:
    """`--merge-shards`: join every shard's part file into the output, under the output's lock."""
    if shard is not None:
        raise BadInput("--merge-shards joins every shard: leave out --shard", key="--merge-shards")
    if dry_run:
        parts = shard_parts(paths)
        say(f"would merge {len(parts)} part file(s) into {paths.results}")
        return {"dry_run": True, "parts": [str(p) for p in parts]}
    lock = OutputLock(paths.lock)
    lock.acquire()
    try:
        summary = merge_shards(paths)
    finally:
        lock.release()
    say(f"merged {len(summary['merged_parts'])} part file(s): {summary['rows']} rows in {paths.results}")
    if summary["missing_shards"]:
        say(f"warning: no part file yet for shard(s) {', '.join(summary['missing_shards'])}")
    return summary
