"""Writing files safely, for every job: atomic writes (temp file + rename) with the user's umask,
and the one-writer lock (an exclusive, non-blocking flock keyed on the real path, never deleted
on release)."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput, LockHeld

TMP_SUFFIX = ".llmtune-tmp"
"""Ends the name of every temp file and folder llmtune makes (atomic writes, model/ being saved)."""


def umask() -> int:
    """The process's umask, read without changing it (os.umask would, for a moment, in every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give `path`, and everything in it when a folder, the modes a plain open/mkdir would have:
    tempfile makes 0600 files and 0700 folders, unreadable to the rest of a shared server."""
    mask = umask()
    paths = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for p in paths:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def atomic_write_text(path: Path, text: str, *, mode: int | None = None, sync_folder: bool = False) -> None:
    """Write a file so that readers see the old content or the new, never half of it. `mode`:
    its permission bits (default: what the umask gives a new file); `sync_folder`: also sync the
    folder, so that the rename survives a power cut (a file people edit by hand, one answer at a
    time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~umask() if mode is None else mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_folder:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def atomic_write_json(path: Path, data: Any) -> None:
    """atomic_write_text of `data` as indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def real_lock_path(path: Path) -> Path:
    """The lock file that guards what `path` names, whatever alias reached it: its folder with
    symlinks resolved, and for a lock named `X.lock` the lock of the real file behind X."""
    folder = path.parent.resolve()
    guarded = folder / path.name.removesuffix(".lock")
    if path.name.endswith(".lock") and guarded.is_symlink():
        real = guarded.resolve()
        return real.parent / f"{real.name}.lock"
    return folder / path.name


class OutputLock:
    """An exclusive, non-blocking flock: a second holder gets LockHeld (exit 75) at once.

    One output, one lock file, through any alias (see `real_lock_path`). `release()` never deletes
    the lock file: if it did, a process that opened the old file just before the unlink would
    lock it while a third process creates and locks a new one, and both would write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._made_file = False
        self._made_dirs: list[Path] = []

    def acquire(self) -> None:
        """Take the lock, or raise LockHeld naming its holder; nothing is touched then."""
        self.path = real_lock_path(self.path)
        made_dirs = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, made_file = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.path.read_text().strip() or "another process"
            raise LockHeld(f"{self.path} is held by {holder}; nothing was touched") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {dt.datetime.now().isoformat(timespec='seconds')}".encode())
        self._fd, self._made_file, self._made_dirs = fd, made_file, made_dirs

    def _open(self) -> tuple[int, bool]:
        for _ in range(5):  # the file may vanish between the two opens (a `discard` elsewhere)
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
            except FileExistsError:
                pass
            try:
                return os.open(self.path, os.O_RDWR), False
            except FileNotFoundError:
                continue
            except PermissionError:
                raise BadInput(f"cannot open the lock file {self.path}: permission denied") from None
        raise LockHeld(f"{self.path} keeps being created and removed by another process")

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Let the next run in; the lock file stays (see the class docstring)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Release, and remove what acquire() created (the lock file, then its new folders while
        they are empty): for a run that stops on bad input or --dry-run and leaves no trace.

        The file is unlinked while still locked: a process that opened it before the unlink finds
        it held (exit 75), one that opens it after makes a new file. The one race left: a process
        that opened it before the unlink and calls flock just after the release locks the
        orphaned file while a third locks the new one. That window is a few instructions wide and
        exists only on this no-trace path; ordinary `release` never unlinks."""
        if self._fd is None:
            return
        if self._made_file:
            self.path.unlink(missing_ok=True)
        self.release()
        for folder in self._made_dirs:  # deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        self._made_dirs = []
