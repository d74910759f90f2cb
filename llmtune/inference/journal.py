"""The one append-only JSON-lines journal of inference results, and the fingerprints that say
when a stored result is stale: what makes bulk-infer, distill's teacher labelling and rlhf's
collect resumable, each row written exactly once.

Rows are appended in chunks, each written, flushed and fsynced with SIGTERM/SIGINT/SIGHUP held
back, so a kill leaves at most one torn line at the end; readers pass over it and
`repair_journal` cuts it off before the next append. Each row carries the fingerprints it was
computed under, so a changed model or prompt makes old rows stale instead of silently reused.
Files are opened the way `llmtune.outputs` opens them: never through a link.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmtune.errors import STOP_SIGNALS, BadInput
from llmtune.outputs import (
    TMP_SUFFIX,
    check_plain_file,
    open_append,
    open_existing,
    temp_file,
    umask,
)

Record = dict[str, Any]

# files in a model folder that loading does not read
NOT_MODEL_FILES = (".jsonl", ".csv", ".parquet", ".lock", ".log", ".md", ".tmp", ".partial", TMP_SUFFIX)


def text_fingerprint(*parts: Any) -> str:
    """A short sha256 of `parts` (JSON-encoded), e.g. a prompt template and its settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def folder_fingerprint(folder: Path, *extra: Any) -> str:
    """Changes when a model folder's files change (see `digest_folder`), and with `extra` (how the
    model is loaded)."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    digest_folder(digest, folder)
    return digest.hexdigest()[:16]


def digest_folder(digest: Any, folder: Path) -> None:
    """Add a model folder's files to `digest`: small files whole, big weight files by size plus
    their first and last MiB (fast for GBs); files loading does not read are left out."""
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


# ----------------------------------------------------------------------------- reading
def iter_journal(path: Path) -> Iterator[Record]:
    """Complete, valid rows of a journal (a torn or garbled line is passed over)."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return  # torn by a kill: `repair_journal` cuts it off before the next append
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "id" in record:
                yield record


def is_row(line: bytes) -> bool:
    """Whether `line` is a complete journal row (a JSON object with an id)."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "id" in record


def repair_journal(path: Path, refuse: Callable[[int], BadInput] | None = None) -> int:
    """Cut a last line torn by a kill; returns how many lines were removed (0 or 1). A complete
    last row that lacks only its newline gets one. `refuse`: a line elsewhere that is not a row
    raises `refuse(line_number)` and the file is left as it is (a file that is not a journal);
    without it such lines stay, and readers pass over them. Never through a link."""
    if not path.exists() and not path.is_symlink():
        return 0
    with open_existing(path) as f:
        data = f.read()
        lines = data.split(b"\n")
        if refuse is not None:
            for number, line in enumerate(lines[:-1], 1):
                if line.strip() and not is_row(line):
                    raise refuse(number)
        last = lines[-1]
        if not last:
            return 0
        if is_row(last):
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(len(data) - len(last))
        f.flush()
        os.fsync(f.fileno())
    return 0 if is_row(last) else 1


# ----------------------------------------------------------------------------- writing
def encode(record: Record, default: Callable[[Any], Any] = float) -> str:
    """One journal line: JSON (UTF-8 as it is), `default` for values JSON has no type for."""
    return json.dumps(record, ensure_ascii=False, default=default) + "\n"


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP wait until the block has run (a chunk is written whole), then
    act as usual. Only the main thread can handle signals; elsewhere the block simply runs."""
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


class AppendFile:
    """A JSON-lines file held open and appended to in chunks: each chunk is written, flushed and
    fsynced together with signals held back, so a kill leaves at most one torn line at the end.
    Opened with O_NOFOLLOW: a link or a hard-linked file there is BadInput naming it."""

    def __init__(self, path: Path, default: Callable[[Any], Any] = float) -> None:
        self.path = path
        self.default = default
        self._file = self._open()

    def _open(self) -> Any:
        return open_append(self.path)

    def append(self, records: list[Record]) -> None:
        """Write `records` at the end: flushed and fsynced, with signals held until done."""
        if not records:
            return
        with signals_held():
            self._file.write("".join(encode(r, self.default) for r in records))
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class ReplacingFile(AppendFile):
    """Appended like AppendFile, but to a new temp file beside `path` that replaces `path` on
    close: readers see the previous version or this one, never a truncated file."""

    def _open(self) -> Any:
        check_plain_file(self.path, in_place=False)  # a link there: refused before any row runs
        fd, self._tmp = temp_file(self.path.parent, self.path.name)
        os.fchmod(fd, 0o666 & ~umask())  # the user's umask, as a plain open would give
        return os.fdopen(fd, "w", encoding="utf-8")

    def close(self) -> None:
        with signals_held():
            self._file.close()
            os.replace(self._tmp, self.path)


class Journal:
    """A journal file that llmtune itself writes (inside a run directory): read what is done,
    append chunks atomically with respect to signals (a line a kill tore is cut off first)."""

    def __init__(self, path: Path, default: Callable[[Any], Any] = float) -> None:
        self.path = path
        self.default = default

    def done(self, **fingerprints: str) -> dict[str, Record]:
        """id -> row for the rows computed under exactly these fingerprints (stale rows ignored)."""
        return {
            r["id"]: r
            for r in iter_journal(self.path)
            if all(r.get(name) == value for name, value in fingerprints.items())
        }

    def append(self, records: list[Record]) -> None:
        """Write `records` at the end: flushed and fsynced, with signals held until done."""
        if not records:
            return
        with signals_held():
            repair_journal(self.path)
            writer = AppendFile(self.path, self.default)
            try:
                writer.append(records)
            finally:
                writer.close()
