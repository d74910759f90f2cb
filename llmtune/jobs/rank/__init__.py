"""`llmtune rank CANDIDATES.jsonl`: a person ranks collected outputs, one prompt at a time.

The file is JSON lines, one row per prompt: `{"id", "prompt", "responses": [...], "ranking": ""}`
(rlhf's collect stage writes it; any annotation tool can). An empty or missing `ranking` means
"not ranked yet". The whole file is checked before anything is shown (exit 2 with file:line).

Each accepted answer is saved at once: the whole file is rewritten atomically (temp file in the
same folder, fsync, rename; the file keeps its permission bits), so a closed terminal or a kill
loses nothing and never leaves half a file. Rows that were not answered keep their line exactly
as it was. A lock beside the file keeps a second session out (exit 75), and a file that another
program changed while the session ran is never overwritten. The dialogue is in `session.py`.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from llmtune.data.formats import kind_of
from llmtune.data.preferences import ranking_of
from llmtune.errors import BadInput, LockHeld, Problem
from llmtune.inference.journal import signals_held
from llmtune.jobs.rank.session import Candidate, rank_rows
from llmtune.runs.outputs import OutputLock, atomic_write_text

MAX_SHOWN = 20  # problems listed in one refusal; the rest are counted


class Candidates:
    """The rows of a candidates file, and their atomic saving to `target` (which may be the file
    itself, or another file with --output)."""

    def __init__(self, source: Path, target: Path) -> None:
        self.source, self.target = source, target
        if target.exists() and not os.access(target, os.W_OK):  # rename would replace it anyway
            raise BadInput("the file is read-only; rank into another file with --output", file=str(target))
        self._seen = _signature(target)  # before reading: a change while we read is seen too
        self.lines, self.rows = _read(source)

    def ranked(self) -> int:
        return sum(bool(row.ranking) for row in self.rows)

    def save(self, row: Candidate, ranking: str) -> None:
        """Set `row`'s ranking and rewrite the target file whole, atomically, signals held back
        so that an interrupt lands before or after the write, never inside it."""
        if _signature(self.target) != self._seen:
            raise LockHeld(
                f"{self.target} was changed by another program during this session; it was not "
                "overwritten (the answers saved before are in it): run `llmtune rank` again"
            )
        row.data["ranking"] = ranking
        ending = self.lines[row.index][len(self.lines[row.index].rstrip("\r\n")) :] or "\n"
        self.lines[row.index] = json.dumps(row.data, ensure_ascii=False) + ending
        with signals_held():
            _replace(self.target, "".join(self.lines))
            self._seen = _signature(self.target)


def run_rank(candidates: Path, output: Path | None = None, *, revisit: bool = False) -> dict[str, int]:
    """Rank the rows of `candidates` interactively (stdin/stdout), saving each answer at once into
    the file itself, or into `output` (created from it on the first answer; a rerun reads it)."""
    target = Path(os.path.realpath(output if output is not None else candidates))
    lock = OutputLock(target.parent / f"{target.name}.lock")
    lock.acquire()
    source = target if target.exists() else Path(candidates)
    if output is not None and source == target != Path(os.path.realpath(candidates)):
        print(f"continuing {output} (it holds the answers so far; {candidates} is not read)", file=sys.stderr)
    try:
        book = Candidates(source, target)
    except BadInput:
        lock.discard()  # refused input leaves no trace
        raise
    try:
        answered = rank_rows(book.rows, book.save, revisit=revisit)
    finally:
        with signals_held():
            lock.release()
    ranked, total = book.ranked(), len(book.rows)
    print(f"ranked {answered} now; {ranked} of {total} rows ranked; {total - ranked} left", file=sys.stderr)
    if answered:
        print(f"saved in {target}", file=sys.stderr)
    return {"ranked_now": answered, "ranked": ranked, "rows": total}


def _read(path: Path) -> tuple[list[str], list[Candidate]]:
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
