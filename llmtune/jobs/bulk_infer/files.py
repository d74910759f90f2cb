"""bulk-infer's files: the model fingerprint, the append-only journal that resume reads, shard
merging, csv/parquet (paths and ids are in `paths.py`).

Every result row is appended to a JSON-lines *journal* in flushed, fsynced chunks, written with
SIGTERM/SIGINT held back. The journal is the source of truth: a rerun skips the ids it holds (by
`id_key`, so that ids keep their type and `1` is not `"1"`), a line torn by a crash is cut off on
the next run, and a row is never written twice. For `x.jsonl` the journal is the output itself;
for csv and parquet it is `x.journal.jsonl`, and `x.csv` / `x.parquet` is rewritten atomically
from it at the end of a run. The errors file is replaced at the end of each run (temp + rename),
never truncated in place. No written path may be a read path: `check_paths`, before anything opens.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput
from llmtune.jobs.bulk_infer.paths import OutputPaths, id_key
from llmtune.models.info import resolve_model_path
from llmtune.recipes.bulk_infer import BulkInferRecipe
from llmtune.runs.outputs import apply_umask, atomic_write_text, umask

Record = dict[str, Any]


# ---------------------------------------------------------------- fingerprints
def model_fingerprint(recipe: BulkInferRecipe) -> str:
    """Changes when the weights or how they are loaded change: the model folders' content, not
    how their paths are spelled (moving a recipe must not make every row stale), nor the device."""
    ref = recipe.model
    if ref.scratch is not None:
        digest = hashlib.sha256(
            json.dumps(ref.model_dump(exclude={"device", "threads"}), sort_keys=True).encode()
        )
        digest.update(str(recipe.seed).encode())  # scratch weights come from the seed
        return digest.hexdigest()[:16]
    spelling = {"device", "path", "adapter", "revision", "threads"}
    digest = hashlib.sha256(json.dumps(ref.model_dump(exclude=spelling), sort_keys=True).encode())
    for role, folder in _model_folders(recipe):
        digest.update(role.encode())
        _digest_folder(digest, folder)
    return digest.hexdigest()[:16]


def _model_folders(recipe: BulkInferRecipe) -> list[tuple[str, Path]]:
    single = recipe.resolve_path(recipe.model.path or "")
    if recipe.model.path and single.is_file():  # a GGUF file (engine: llamacpp)
        return [("model", single)]
    folders = [("model", Path(resolve_model_path(recipe.model, recipe, "model")))]
    if recipe.model.adapter:
        folders.append(("adapter", recipe.resolve_path(recipe.model.adapter)))
    return folders


# files in a model folder that loading does not read (an output written there is fine)
NOT_MODEL_FILES = (".jsonl", ".csv", ".parquet", ".lock", ".log", ".md", ".tmp", ".partial")


def _digest_folder(digest: Any, folder: Path) -> None:
    # small files whole; big weight files by size plus their first and last MiB (fast for GBs)
    for file in [folder] if folder.is_file() else sorted(folder.rglob("*")):
        relative = file.relative_to(folder) if file != folder else Path(file.name)
        if not file.is_file() or file.suffix.lower() in NOT_MODEL_FILES:
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        size = file.stat().st_size
        digest.update(f"{relative.as_posix()}:{size}".encode())
        with file.open("rb") as f:
            if size <= 64 << 20:
                digest.update(f.read())
            else:
                digest.update(f.read(1 << 20))
                f.seek(size - (1 << 20))
                digest.update(f.read())


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
    """id_key -> (model_fingerprint, prompt_fingerprint) of every row already written."""
    done: dict[str, tuple[str | None, str | None]] = {}
    for path in paths:
        for record in iter_journal(path):
            done[id_key(record["id"])] = (record.get("model_fingerprint"), record.get("prompt_fingerprint"))
    return done


def repair_journal(path: Path) -> int:
    """Cut a last line torn by a crash; returns how many lines were removed (0 or 1).

    Only that line is cut (a complete last row that lacks its newline gets one). Any other line
    that is not a result row means the file is not a journal bulk-infer wrote: BadInput, and the
    file is left as it is."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, line in enumerate(lines[:-1], 1):
        if line.strip() and not _valid(line):
            raise BadInput(
                "is not a result row that bulk-infer wrote; output.path must be a file that bulk-infer "
                "writes (move this file away, or fix the line)",
                file=f"{path}:{number}",
                key="output.path",
            )
    last = lines[-1]
    if not last:
        return 0
    with path.open("r+b") as f:
        if _valid(last):  # complete, only the newline is missing
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(len(data) - len(last))
        os.fsync(f.fileno())
    return 0 if _valid(last) else 1


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


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block has run (a chunk is written whole), then act as
    usual. Only the main thread can handle signals; elsewhere the block simply runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda n, _: caught.append(n)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if caught:
            signal.raise_signal(caught[0])


class AppendFile:
    """A JSON-lines file appended to in chunks: each chunk is written, flushed and fsynced
    together with signals held back, so a crash leaves at most one torn line at the end."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = self._open()

    def _open(self) -> Any:
        return self.path.open("a", encoding="utf-8")

    def append(self, records: list[Record]) -> None:
        if not records:
            return
        with signals_held():
            self._file.write("".join(_line(r) for r in records))
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class ReplacingFile(AppendFile):
    """Appended like AppendFile, but to a hidden temp file beside `path` that replaces `path`
    on close: readers see the previous version or this one, never a truncated file."""

    def _open(self) -> Any:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial")
        os.fchmod(fd, 0o666 & ~umask())  # the user's umask, as a plain open would give
        self._tmp = Path(tmp)
        return os.fdopen(fd, "w", encoding="utf-8")

    def close(self) -> None:
        with signals_held():
            self._file.close()
            os.replace(self._tmp, self.path)


# -------------------------------------------------------- materialise and merge
def materialise(journal: Path, results: Path) -> None:
    """Write the csv/parquet results file from the journal, atomically (jsonl: nothing to do)."""
    if results == journal:
        return
    records = list({id_key(r["id"]): r for r in iter_journal(journal)}.values())
    if len({type(r["id"]) for r in records}) > 1:  # a typed column cannot hold 1 and "1" apart
        records = [{**r, "id": id_key(r["id"])} for r in records]
    results.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=results.parent, prefix=f".{results.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        if results.suffix.lower() == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(records), tmp)
        else:
            _write_csv(records, tmp)
        apply_umask(tmp)  # mkstemp made it 0600
        os.replace(tmp, results)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    merged: dict[str, Record] = {id_key(r["id"]): r for r in iter_journal(journal)}
    before = len(merged)
    for part in parts:
        merged.update({id_key(r["id"]): r for r in iter_journal(part)})
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
