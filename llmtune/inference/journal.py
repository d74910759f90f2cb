"""An append-only JSON-lines journal of inference results, and fingerprints that say when a stored
result is stale: what makes a labelling pass resumable (distill's teacher labels; bulk-infer
keeps its own copy of the same rules in jobs/bulk_infer/files.py and could use this module).

Rows are appended in chunks, each written, flushed and fsynced with SIGTERM/SIGINT held back,
so a kill leaves at most one torn line at the end; readers pass over it and `Journal` cuts it
off before appending. Each row carries the fingerprints it was computed under, so a changed
model or prompt makes old rows stale instead of silently reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmtune.errors import STOP_SIGNALS
from llmtune.runs.outputs import TMP_SUFFIX, open_append, open_existing

Record = dict[str, Any]

# files in a model folder that loading does not read
NOT_MODEL_FILES = (".jsonl", ".csv", ".parquet", ".lock", ".log", ".md", ".tmp", ".partial", TMP_SUFFIX)


def text_fingerprint(*parts: Any) -> str:
    """A short sha256 of `parts` (JSON-encoded), e.g. a prompt template and its settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def folder_fingerprint(folder: Path, *extra: Any) -> str:
    """Changes when a model folder's files change (small files whole; big weight files by size
    plus their first and last MiB, fast for GBs), and with `extra` (how the model is loaded)."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder)
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
    return digest.hexdigest()[:16]


def iter_journal(path: Path) -> Iterator[Record]:
    """Complete, valid rows of a journal (a torn or garbled line is passed over)."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return  # torn by a kill: cut off before the next append
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "id" in record:
                yield record


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP wait until the block has run (a chunk is written whole), then act as
    usual. Only the main thread can handle signals; elsewhere the block simply runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda n, _: caught.append(n)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if caught:
            signal.raise_signal(caught[0])


class Journal:
    """A journal file that llmtune itself writes (inside a run directory): read what is done,
    append chunks atomically with respect to signals."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def done(self, **fingerprints: str) -> dict[str, Record]:
        """id -> row for the rows computed under exactly these fingerprints (stale rows ignored)."""
        return {
            r["id"]: r
            for r in iter_journal(self.path)
            if all(r.get(name) == value for name, value in fingerprints.items())
        }

    def _cut_torn_line(self) -> None:
        if not self.path.exists() and not self.path.is_symlink():
            return
        with open_existing(self.path) as f:  # never through a link
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, records: list[Record]) -> None:
        """Write `records` at the end: flushed and fsynced, with signals held until done."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False, default=float) + "\n" for r in records)
        with signals_held():
            self._cut_torn_line()
            with open_append(self.path) as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
