"""Writing files safely, for every job: atomic writes (temp file + rename) with the user's umask,
appends, and the one-writer lock (an exclusive, non-blocking flock keyed on the real path, never
deleted on release).

The one rule for every file llmtune writes: never through a link it did not create. New files are
made with O_EXCL (temp files, new locks), existing ones are opened with O_NOFOLLOW and must be
plain, single-link files (`check_plain_file`), and a replaced file is replaced by a rename, which
replaces a link at that name instead of following it. Temp files are named after their maker
(host and pid), so that a later run removes the ones a killed run left (`sweep_stale_temps`).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import re
import socket
import stat
import tempfile
from pathlib import Path
from typing import IO, Any

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


def _refusal(path: Path, what: str) -> BadInput:
    return BadInput(
        f"{what}; llmtune never writes through a link it did not create, nor into anything but a "
        "plain file: remove it (or choose another output)",
        file=str(path),
    )


def check_plain_file(path: Path, *, in_place: bool = True) -> None:
    """Refuse (BadInput, naming it) a path llmtune would write that is a symbolic link, or exists
    and is not a regular file, or (`in_place`: written in place, not replaced by a rename) is a
    file with a second hard link, whose other name would change too. A missing path is fine. Only
    the last component is checked: the folders of a path are where the user pointed it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise _refusal(path, f"is a symbolic link (to {os.readlink(path)})")
    if not stat.S_ISREG(st.st_mode):
        raise _refusal(path, "exists and is not a regular file")
    if in_place and st.st_nlink > 1:
        raise _refusal(
            path,
            f"has {st.st_nlink} hard links: writing it would change the file behind its other names too "
            "(or split them); keep one name (e.g. `cp FILE FILE.new && mv FILE.new FILE`)",
        )


def _checked_fd(fd: int, path: Path) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        check_plain_file(path)  # names what it is
        raise _refusal(path, "changed while it was opened")
    return fd


def _open_nofollow(path: Path, flags: int, mode: int = 0o666) -> int:
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            check_plain_file(path)
            raise _refusal(path, "is not a regular file") from None
        if isinstance(exc, PermissionError | FileNotFoundError | FileExistsError):
            raise
        raise BadInput(f"cannot open the file for writing: {exc.strerror}", file=str(path)) from None
    fd = _checked_fd(fd, path)
    os.set_blocking(fd, True)
    return fd


def open_append(path: Path) -> IO[str]:
    """`path` opened to append text (created if missing), never through a link: a symlink, a
    non-regular file or a hard-linked file there is BadInput naming it (see `check_plain_file`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except PermissionError:
        raise BadInput("cannot write the file: permission denied", file=str(path)) from None
    return os.fdopen(fd, "a", encoding="utf-8", newline="")


def open_existing(path: Path) -> IO[bytes]:
    """An existing file llmtune wrote, opened to read and change in place (cut a torn line), never
    through a link (see `check_plain_file`)."""
    try:
        fd = _open_nofollow(path, os.O_RDWR)
    except PermissionError:
        raise BadInput("cannot write the file: permission denied", file=str(path)) from None
    return os.fdopen(fd, "r+b")


# -------------------------------------------------------------------------- temp files
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host"
# .<name>.<host>-<pid>-<random>.llmtune-tmp: who made it, so that a later run can tell it is stale
_TEMP_NAME = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[A-Za-z0-9_]+" + re.escape(TMP_SUFFIX) + "$"
)
_swept: set[str] = set()


def temp_file(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty temp file in `folder` for `name` (O_EXCL: never an existing file or a link),
    named after this host and process so that a later run can remove it once its maker is gone
    (`sweep_stale_temps`, done here once per folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.{_HOST}-{os.getpid()}-", suffix=TMP_SUFFIX)
    return fd, Path(tmp)


def sweep_stale_temps(folder: Path) -> list[Path]:
    """Remove the temp files llmtune left in `folder` when it was killed: only names llmtune's
    temp files have, made on this host by a process that no longer runs, plain files owned by
    this user. Anything else, a file of another program included, is never touched."""
    key = str(folder.resolve())
    if key in _swept:
        return []
    _swept.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match or match["host"] != _HOST or process_alive(int(match["pid"])):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (this one included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def atomic_write_text(path: Path, text: str, *, mode: int | None = None, sync_folder: bool = False) -> None:
    """Write a file so that readers see the old content or the new, never half of it. `mode`:
    its permission bits (default: what the umask gives a new file); `sync_folder`: also sync the
    folder, so that the rename survives a power cut (a file people edit by hand, one answer at a
    time). The text goes to a new temp file (never a link) that then replaces `path`: a link at
    `path` is replaced, never written through."""
    fd, tmp = temp_file(path.parent, path.name)
    try:
        os.fchmod(fd, 0o666 & ~umask() if mode is None else mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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


LOCK_RECORD = 64  # bytes: "pid N since T", padded, so that a lock file is rewritten, never truncated
_LOCK_TEXT = re.compile(rb"^(pid \d+ since \S+)?\s*$")


def _check_lock_text(fd: int, path: Path) -> None:
    """A lock file must hold only what llmtune writes in one (call it with the lock held, or on a
    lock no process holds: a held one is an overlap whatever it says, exit 75)."""
    if os.fstat(fd).st_size > LOCK_RECORD or not _LOCK_TEXT.match(os.pread(fd, LOCK_RECORD + 1, 0)):
        raise BadInput(
            "is not a lock file of llmtune's (it holds something else); llmtune never overwrites "
            "it: move it away",
            file=str(path),
        )


class OutputLock:
    """An exclusive, non-blocking flock: a second holder gets LockHeld (exit 75) at once.

    One output, one lock file, through any alias (see `real_lock_path`). `release()` never deletes
    the lock file: if it did, a process that opened the old file just before the unlink would
    lock it while a third process creates and locks a new one, and both would write.

    The lock file is never followed, never truncated: it is created new (O_EXCL) or opened with
    O_NOFOLLOW, and must then be a plain, single-link file holding only what a lock of llmtune's
    holds ("pid N since T"); anything else there (a symlink, a folder, a fifo, another file) is
    BadInput naming it. For a lock `X.lock`, a hard-linked X is refused too (`check_plain_file`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._made_file = False
        self._made_dirs: list[Path] = []

    def check(self) -> None:
        """What acquire() refuses, without opening anything (for --dry-run)."""
        path = real_lock_path(self.path)
        check_plain_file(path)
        if path.name.endswith(".lock"):
            check_plain_file(path.with_name(path.name.removesuffix(".lock")))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except PermissionError:
            return  # acquire() says so, naming it; a dry run only reads
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # held by a run: acquire() says 75
            _check_lock_text(fd, path)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)

    def holder(self) -> str | None:
        """Who holds this lock now ("pid N since T"), or None when no process does; reads only."""
        path = real_lock_path(self.path)
        check_plain_file(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, PermissionError):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, LOCK_RECORD, 0).decode(errors="replace").strip() or "another process"
        finally:
            os.close(fd)  # closing drops the shared lock, if it was taken
        return None

    def acquire(self) -> None:
        """Take the lock, or raise LockHeld naming its holder; nothing is touched then."""
        self.check()
        self.path = real_lock_path(self.path)
        made_dirs = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, made_file = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, LOCK_RECORD, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockHeld(f"{self.path} is held by {holder}; nothing was touched") from None
        try:
            _check_lock_text(fd, self.path)  # ours now: nothing but a lock record may be in it
        except BadInput:
            os.close(fd)  # unlocks
            raise
        record = f"pid {os.getpid()} since {dt.datetime.now().isoformat(timespec='seconds')}"
        os.pwrite(fd, record.ljust(LOCK_RECORD - 1).encode() + b"\n", 0)
        self._fd, self._made_file, self._made_dirs = fd, made_file, made_dirs

    def _open(self) -> tuple[int, bool]:
        for _ in range(5):  # the file may vanish between the two opens (a `discard` elsewhere)
            try:
                return _open_nofollow(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL), True
            except FileExistsError:
                pass
            except PermissionError:
                raise BadInput(f"cannot create the lock file {self.path}: permission denied") from None
            try:
                fd = _open_nofollow(self.path, os.O_RDWR)
            except FileNotFoundError:
                continue
            except PermissionError:
                raise BadInput(f"cannot open the lock file {self.path}: permission denied") from None
            return fd, False
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
