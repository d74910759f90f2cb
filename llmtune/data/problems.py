"""Bad rows reported the way a person can act on them: identical problems grouped into one
line with their count and first rows, at most MAX_SHOWN lines then a count, and the nearest
valid name for a misspelled one."""

from __future__ import annotations

import difflib
from typing import NoReturn

from llmtune.errors import BadInput, Problem

MAX_SHOWN = 20  # lines of problems in one error; the rest are counted
SKIP_HINT = "fix these rows, or set data.skip_bad_rows: true to skip and count them"


def refuse(problems: list[Problem], hint: str | None = None) -> NoReturn:
    """Raise one BadInput: problems with the same message grouped into one line (the count and
    the first rows), the first MAX_SHOWN such lines, a count of the rest, and `hint`."""
    lines = grouped(problems)
    shown = lines[:MAX_SHOWN]
    if len(lines) > MAX_SHOWN:
        shown.append(Problem(f"... and {len(lines) - MAX_SHOWN} more"))
    raise BadInput(problems=shown + ([Problem(hint)] if hint else []))


FIRST_ROWS = 3  # rows named in a grouped line


def grouped(problems: list[Problem]) -> list[Problem]:
    """Identical problems as one line: `file:12: label 'x' is not in labels ... (20 rows: line 12,
    line 15, line 18, ...)`; a problem found at most FIRST_ROWS times is listed as it is."""
    groups: dict[str, list[Problem]] = {}
    for problem in problems:
        groups.setdefault(problem.message, []).append(problem)
    out = []
    for message, group in groups.items():
        if len(group) <= FIRST_ROWS:  # as short listed one by one
            out.extend(group)
            continue
        where = [p.file for p in group if p.file]
        listed = ", ".join(_line_of(w, where[0]) for w in where[:FIRST_ROWS])
        more = ", ..." if len(where) > FIRST_ROWS else ""
        out.append(Problem(f"{message} ({len(group)} rows: {listed}{more})", file=group[0].file))
    return out


def _line_of(where: str, first: str) -> str:
    """`line 15` when `where` is in the same file as `first`, else `where` itself."""
    file, _, line = where.rpartition(":")
    return f"line {line}" if line.isdigit() and file == first.rpartition(":")[0] else where


def closest(word: str, choices: list[str]) -> str | None:
    """The choice `word` most likely meant: the same but for case first, then difflib's nearest."""
    folded = {choice.casefold(): choice for choice in choices}
    if word.casefold() in folded:
        return folded[word.casefold()]
    near = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return near[0] if near else None
