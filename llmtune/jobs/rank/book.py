"""The rows of a candidates file and the one way an answer is saved (`Candidates.answer`), for
the terminal session and the web page alike (see the package docstring for the guarantees)."""

from __future__ import annotations

import enum
import errno
import io
import json
import os
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.data.annotators import check_annotator, check_distinct, rankings_of
from llmtune.data.formats import kind_of
from llmtune.data.preferences import ranking_of
from llmtune.data.rankings import RankingError, parse_ranking
from llmtune.errors import BadInput, LockHeld, Problem
from llmtune.inference.journal import signals_held
from llmtune.outputs import OutputLock, atomic_write_text

MAX_SHOWN = 20  # problems listed in one refusal; the rest are counted


class Session(enum.Enum):
    """The default annotator of a call: the one the session was started with."""

    ANNOTATOR = "session"


SESSION = Session.ANNOTATOR


@dataclass
class Candidate:
    """One row to rank (checked when the file was read): its parsed JSON and where it is."""

    data: dict[str, Any]
    line: int
    """1-based line number in the file."""
    index: int
    """Index of its line among the file's lines (blank ones included)."""

    def ranking_by(self, annotator: str | None) -> str:
        """The row's ranking by `annotator` (None: its single `ranking` field); "" if none."""
        if annotator is None:
            text = self.data.get("ranking")
        else:
            text = (self.data.get("rankings") or {}).get(annotator)
        return text.strip() if isinstance(text, str) else ""

    @property
    def name(self) -> str:
        """The row's id, or its line when it has none."""
        return str(self.data["id"]) if "id" in self.data else f"line {self.line}"


class Stale(Exception):
    """The row's ranking changed (another tab, another person under the same name) after the
    answer's sender last saw it: nothing was saved. The message says what it is now."""


class Candidates:
    """The rows of a candidates file, and their atomic saving to `target` (which may be the file
    itself, or another file with --output). `annotator`: whose rankings are read and written
    (None: the single `ranking` field)."""

    def __init__(self, source: Path, target: Path, annotator: str | None = None) -> None:
        self.source, self.target, self.annotator = source, target, annotator
        if target.exists() and not os.access(target, os.W_OK):  # rename would replace it anyway
            raise BadInput("the file is read-only; rank into another file with --output", file=str(target))
        self._seen = _signature(target)  # before reading: a change while we read is seen too
        self.lines, self.rows = read_rows(source)
        self._lock = threading.Lock()

    def ranking(self, row: Candidate, annotator: str | None | Session = SESSION) -> str:
        """The row's current ranking by `annotator` (default: the session's), "" if none yet."""
        return row.ranking_by(self.annotator if annotator is SESSION else annotator)

    def ranked(self, annotator: str | None | Session = SESSION) -> int:
        """Rows ranked by `annotator` (default: the session's)."""
        return sum(bool(self.ranking(row, annotator)) for row in self.rows)

    def answer(
        self, row: Candidate, text: str, *, seen: str | None = None, annotator: str | None | Session = SESSION
    ) -> str:
        """Save `text` as `row`'s ranking and return its canonical form. The one path of every
        answer (terminal and web): RankingError with the reason for a malformed ranking or one
        that puts identical texts apart; Stale when `seen` (the ranking the sender was shown) is
        no longer the row's; BadInput when the file cannot be written (nothing changes then)."""
        responses = row.data["responses"]
        ranking = parse_ranking(text, len(responses))
        check_distinct(ranking, responses)
        who = self.annotator if annotator is SESSION else annotator
        with self._lock:
            current = row.ranking_by(who)
            if seen is not None and seen.strip() != current:
                now = f"it is now {current!r}" if current else "it was cleared"
                raise Stale(f"{row.name} was answered elsewhere since this page showed it ({now}); not saved")
            self._save(row, str(ranking), who)
        return str(ranking)

    def _save(self, row: Candidate, ranking: str, annotator: str | None) -> None:
        """Set `row`'s ranking and rewrite the target file whole, atomically, signals held back
        so that an interrupt lands before or after the write, never inside it."""
        if _signature(self.target) != self._seen:
            raise LockHeld(
                f"{self.target} was changed by another program during this session; it was not "
                "overwritten (the answers saved before are in it): run `llmtune rank` again"
            )
        data = json.loads(json.dumps(row.data))  # a copy: the row changes only once saved
        if annotator is None:
            data["ranking"] = ranking
        else:
            data["rankings"] = {**(data.get("rankings") or {}), annotator: ranking}
        lines = list(self.lines)
        ending = lines[row.index][len(lines[row.index].rstrip("\r\n")) :] or "\n"
        lines[row.index] = _json_line(data) + ending
        try:
            with signals_held():
                _replace(self.target, "".join(lines))
                self._seen = _signature(self.target)
        except OSError as exc:
            hint = (
                "; rank into another file with --output" if exc.errno in (errno.EROFS, errno.EACCES) else ""
            )
            raise BadInput(
                f"cannot save the answer: {exc.strerror or exc}{hint} (the answers saved before are in it)",
                file=str(self.target),
            ) from None
        row.data, self.lines = data, lines


def open_book(candidates: Path, output: Path | None, annotator: str | None) -> tuple[Candidates, OutputLock]:
    """The file to rank, read and checked, with its lock held (release it when done). A folder
    that cannot be written is refused before anything is shown (suggesting --output)."""
    if annotator is not None:
        try:
            annotator = check_annotator(annotator)
        except RankingError as exc:
            raise BadInput(str(exc), key="--annotator") from None
    target = Path(os.path.realpath(output if output is not None else candidates))
    if target.parent.is_dir() and not os.access(target.parent, os.W_OK):
        hint = "rank into another file with --output FILE" if output is None else "choose another --output"
        raise BadInput(f"cannot write in {target.parent} (read-only): {hint}", file=str(target))
    lock = OutputLock(target.parent / f"{target.name}.lock")
    try:
        lock.acquire()
    except OSError as exc:
        raise BadInput(
            f"cannot create the lock file beside it: {exc.strerror}; rank into another file with --output FILE",
            file=str(target),
        ) from None
    source = target if target.exists() else Path(candidates)
    if output is not None and source == target != Path(os.path.realpath(candidates)):
        print(f"continuing {output} (it holds the answers so far; {candidates} is not read)", file=sys.stderr)
    try:
        return Candidates(source, target, annotator), lock
    except BadInput:
        lock.discard()  # refused input leaves no trace
        raise


def _json_line(data: dict[str, Any]) -> str:
    """A row as one JSON line, as text where it can be; a row holding a lone surrogate (which
    UTF-8 cannot encode) is written with \\u escapes instead, so it reads back the same."""
    line = json.dumps(data, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(data, ensure_ascii=True)
    return line


def read_rows(path: Path) -> tuple[list[str], list[Candidate]]:
    """Every line of the file (kept, to write back unchanged) and its rows, checked; every bad row
    is named in one BadInput."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput("file not found", file=str(path)) from None
    except OSError as exc:
        raise BadInput(f"cannot read the file: {exc.strerror}", file=str(path)) from None
    lines, rows, problems, ids = [], [], [], {}
    # bytes split on \n only: JSON written with ensure_ascii=False may hold U+2028 inside a text
    for n, raw in enumerate(io.BytesIO(data), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
            problems.append(Problem(reason, str(path), n))
            continue
        lines.append(text)
        if not text.strip():
            continue
        try:
            row = _check(json.loads(text.removeprefix("\ufeff")), ids, n)
        except json.JSONDecodeError as exc:
            problems.append(Problem(f"invalid JSON: {exc.msg} at column {exc.colno}", str(path), n))
            continue
        except RecursionError:
            problems.append(Problem("invalid JSON: nested too deeply to read", str(path), n))
            continue
        except ValueError as exc:
            problems.append(Problem(str(exc), str(path), n))
            continue
        rows.append(Candidate(row, n, len(lines) - 1))
    if not problems and not rows:
        problems.append(Problem("no rows to rank (the file is empty)", str(path)))
    if problems:
        more = [Problem(f"... and {len(problems) - MAX_SHOWN} more")] if len(problems) > MAX_SHOWN else []
        raise BadInput(problems=problems[:MAX_SHOWN] + more)
    return lines, rows


def _check(row: Any, ids: dict[str, int], line: int) -> dict[str, Any]:
    """`row` if it can be ranked; ValueError with the reason if not."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object per row, got {kind_of(row)}")
    if "id" in row:
        if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
            raise ValueError(f"'id' must be a text or a whole number, got {kind_of(row['id'])}")
        key = json.dumps(row["id"])
        if key in ids:
            raise ValueError(f"id {row['id']!r} is also the id of line {ids[key]}; ids must be unique")
        ids[key] = line
    if row.get("prompt") in (None, "", []):
        raise ValueError("row has no 'prompt'")
    ranking_of(row)  # RankingError (a ValueError) with the reason
    rankings_of(row, len(row["responses"]))
    return row


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What tells that a file was replaced or changed since we last saw it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _replace(path: Path, text: str) -> None:
    """Write `path` whole, atomically; it keeps its permission bits (a new file gets the umask's)."""
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else None
    atomic_write_text(path, text, mode=mode, sync_folder=True)
