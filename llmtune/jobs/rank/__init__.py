"""`llmtune rank CANDIDATES.jsonl`: people rank collected outputs, one prompt at a time, in a
terminal (session.py) or in a browser (`--web`, web.py); `--stats` measures how much they agree.

The file is JSON lines, one row per prompt: `{"id", "prompt", "responses": [...], "ranking": ""}`
(rlhf's collect stage writes it; any annotation tool can). An empty or missing `ranking` means
"not ranked yet". With `--annotator NAME` each person's answer goes into the row's `rankings`
object (`{"alice": "A > B", "bob": "B > A"}`) and the single `ranking` is left alone. The whole
file is checked before anything is shown (exit 2 with file:line).

Every answer, typed or clicked, goes through `Candidates.answer`: the one grammar, the refusal of
a malformed ranking with its reason, and the save: the whole file is rewritten atomically (temp
file in the same folder, fsync, rename; the file keeps its permission bits), so a closed terminal
or a kill loses nothing and never leaves half a file. Rows that were not answered keep their line
exactly as it was. A lock beside the file keeps a second session out (exit 75), and a file that
another program changed while the session ran is never overwritten.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput
from llmtune.inference.journal import signals_held
from llmtune.jobs.rank.book import Candidate, Candidates, Stale, open_book, read_rows
from llmtune.jobs.rank.session import rank_rows

__all__ = ["Candidate", "Candidates", "Stale", "main", "open_book", "read_rows", "run_rank"]


def main(
    candidates: Path,
    output: Path | None = None,
    *,
    revisit: bool = False,
    annotator: str | None = None,
    web: bool = False,
    host: str = "127.0.0.1",
    port: int = 0,
    stats: bool = False,
) -> Any:
    """`llmtune rank`: --stats, --web, or the terminal session."""
    if stats:
        from llmtune.jobs.rank.stats import print_stats

        return print_stats(candidates)
    if web:
        from llmtune.jobs.rank.web import serve

        return serve(candidates, output, annotator=annotator, host=host, port=port)
    return run_rank(candidates, output, revisit=revisit, annotator=annotator)


def run_rank(
    candidates: Path, output: Path | None = None, *, revisit: bool = False, annotator: str | None = None
) -> dict[str, int]:
    """Rank the rows of `candidates` interactively (stdin/stdout), saving each answer at once into
    the file itself, or into `output` (created from it on the first answer; a rerun reads it)."""
    book, lock = open_book(candidates, output, annotator)  # the file's own problems come first
    try:
        if sys.stdin is None or sys.stdin.closed or not _readable(sys.stdin):
            raise BadInput(
                "stdin is closed: there is nothing to read answers from "
                "(run it in a terminal, pipe answers in, or use --web)"
            )
        answered = rank_rows(book, revisit=revisit)
    finally:
        with signals_held():
            lock.release()
    ranked, total = book.ranked(), len(book.rows)
    print(f"ranked {answered} now; {ranked} of {total} rows ranked; {total - ranked} left", file=sys.stderr)
    if answered:
        print(f"saved in {book.target}", file=sys.stderr)
    return {"ranked_now": answered, "ranked": ranked, "rows": total}


def _readable(stream: Any) -> bool:
    try:
        os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return True
