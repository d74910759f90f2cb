"""`llmtune rank`: the choice between --stats, --web and the terminal session, and the terminal
session's run: the file checked and locked, the dialogue (session.py), the counts at the end."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput
from llmtune.inference.journal import signals_held
from llmtune.jobs.rank.book import open_book
from llmtune.jobs.rank.session import rank_rows


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
