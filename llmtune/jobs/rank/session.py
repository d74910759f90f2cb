"""The ranking dialogue: one prompt and its lettered responses at a time, a line of input each.

On a terminal the line is read with prompt_toolkit (arrows, history with Up/Down, Ctrl-R); from a
pipe it is read plainly, so a piped script behaves the same. End of input (Ctrl-D, or the end of
a script) quits like `q`: every answer given so far is already saved. Every string that comes
from the file is printed through `console.shown` (no escape sequence in the data reaches the
terminal).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol

from llmtune.console import shown
from llmtune.data.rankings import RankingError, letters
from llmtune.jobs.rank.book import Candidate, Candidates

ASK = "ranking (e.g. C > B = D > A), t all tied, s skip, b back, q quit, ? help: "
HELP = """\
Rank every response once, best first: '>' means better, '=' a tie.
  C > B = D > A   C is best, B and D tie, A is worst (lower case and no spaces work too)
  t               all tied (no response is better than another; it trains nothing)
  s               skip this prompt (it stays unranked)
  b               back to the previous prompt (type a new ranking, or Enter to keep its own)
  q               quit (every answer given is already saved; a rerun continues here)
  Enter           keep the ranking shown as current (prompts ranked before)
  Up / Down       earlier answers (on a terminal)"""
SKIP, BACK, QUIT, TIED, ASK_HELP = (
    ("s", "skip"),
    ("b", "back"),
    ("q", "quit"),
    ("t", "tied"),
    ("?", "h", "help"),
)
ANSWERED, SKIPPED, KEPT = 1, 2, 3


def rank_rows(book: Candidates, *, revisit: bool = False) -> int:
    """Go through the rows not ranked yet by the session's annotator, in file order (all rows
    with `revisit`), saving each answer at once through `book.answer`; return how many rows were
    given a ranking (a row answered twice, after `b`, counts once)."""
    queue = [row for row in book.rows if revisit or not book.ranking(row)]
    if not queue:
        print("every row is ranked already (--all revisits them)", file=sys.stderr)
        return 0
    answered: set[int] = set()
    skipped: set[int] = set()
    position, reader = 0, line_reader()
    with reader.waking_on_signals():
        while position < len(queue):
            row = queue[position]
            counter = f"[{book.ranked()} of {len(book.rows)} ranked, {len(skipped)} skipped]"
            step = _ask(book, reader, row, counter, first=position == 0)
            if step is None:
                break
            if step == ANSWERED:
                answered.add(row.line)
                skipped.discard(row.line)
            elif step == SKIPPED:
                skipped.add(row.line)
            position += -1 if step < 0 else 1
    return len(answered)


class Reader(Protocol):
    def waking_on_signals(self) -> Any: ...

    def read_line(self, prompt: str) -> str | None: ...


def _ask(book: Candidates, reader: Reader, row: Candidate, counter: str, *, first: bool) -> int | None:
    """Show `row` and read answers until one moves on: ANSWERED, KEPT or SKIPPED (next), -1
    (back), None (quit or end of input)."""
    current = book.ranking(row)
    _show(row, counter, current)
    count = len(row.data["responses"])
    while True:
        line = reader.read_line(ASK)
        if line is None:
            return None
        answer = line.strip()
        word = answer.lower()
        if word in QUIT:
            return None
        if word in SKIP:
            return SKIPPED
        if word in BACK:
            if not first:
                return -1
            print("this is the first prompt; there is none before it", file=sys.stderr, flush=True)
            continue
        if word in ASK_HELP:
            print(HELP, flush=True)
            continue
        if word in TIED:
            answer = " = ".join(letters(count))
        if not answer:
            if current:
                return KEPT
            print("type a ranking, or s to skip", file=sys.stderr, flush=True)
            continue
        try:
            ranking = book.answer(row, answer)
        except RankingError as exc:
            print(f"not saved: {exc}", file=sys.stderr, flush=True)
            continue
        print(f"saved: {ranking}", file=sys.stderr, flush=True)
        return ANSWERED


def _show(row: Candidate, counter: str, current: str) -> None:
    width = max(40, min(shutil.get_terminal_size((100, 24)).columns, 120) - 1)
    from rich.markup import escape

    lines = [
        "",
        f"{escape(counter)} {shown(row.name)}",
        _wrap(shown(prompt_text(row.data["prompt"])), width, ""),
        "",
    ]
    for letter, text in zip(letters(len(row.data["responses"])), row.data["responses"]):
        lines.append(_wrap(shown(text.strip()) or "(empty response)", width, f"{letter}) "))
    if current:
        lines += ["", f"current ranking: {current}  (Enter keeps it)"]
    _print("\n".join(lines))


def _print(text: str) -> None:
    """Print `text` (made of `shown` strings): through rich, so that the markup escapes `shown`
    adds come out as the user's own brackets."""
    from rich.console import Console

    Console(file=sys.stdout, highlight=False, emoji=False, soft_wrap=True).print(text)
    sys.stdout.flush()


def prompt_text(prompt: object) -> str:
    """A prompt as a person reads it: its text, or a chat's turns one per line."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)
    return json.dumps(prompt, ensure_ascii=False)


def _wrap(text: str, width: int, label: str) -> str:
    """`text` wrapped to `width`, its own line breaks kept, continuation lines indented under
    the label."""
    indent, out = " " * len(label), []
    for n, paragraph in enumerate(text.splitlines() or [""]):
        first = label if n == 0 else indent
        out += textwrap.wrap(paragraph, width, initial_indent=first, subsequent_indent=indent) or [
            first.rstrip()
        ]
    return "\n".join(out)


def line_reader() -> Reader:
    """prompt_toolkit's line editor on a terminal; plain reads from a pipe or a file."""
    if os.isatty(sys.stdin.fileno()) and os.isatty(sys.stdout.fileno()):
        return TerminalReader()
    return LineReader()


class TerminalReader:
    """A real line editor (prompt_toolkit): arrows move in the line, Up/Down recall the answers
    typed before, Ctrl-D at an empty line ends the session, Ctrl-C quits (exit 130)."""

    def __init__(self) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import InMemoryHistory

        self._session: Any = PromptSession(history=InMemoryHistory())

    def waking_on_signals(self) -> Any:
        """prompt_toolkit's event loop already wakes up on signals."""
        return nullcontext()

    def read_line(self, prompt: str) -> str | None:
        try:
            return self._session.prompt(prompt)
        except EOFError:
            print(flush=True)
            return None


class LineReader:
    """Lines of stdin, read from its file descriptor next to a signal wake-up pipe.

    `input()` and `sys.stdin.readline()` can miss a SIGTERM that arrives just after the prompt
    is printed and before they block in the read: the signal is noted but nothing wakes the
    read up. Waiting in select() on stdin and on `signal.set_wakeup_fd`'s pipe closes that gap,
    so a signal always ends the session at once. A terminal keeps its own line editing
    (backspace, Ctrl-U, Ctrl-W), and Ctrl-D at the start of a line is the end of input."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.echo = not os.isatty(self.fd)  # a script's answers are not echoed by a terminal
        self._buffer, self._ended = b"", False

    @contextmanager
    def waking_on_signals(self) -> Iterator[None]:
        """While the session runs, every signal with a Python handler also wakes select()."""
        self._wake, write = os.pipe()
        os.set_blocking(write, False)
        previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous)
            os.close(self._wake)
            os.close(write)

    def read_line(self, prompt: str) -> str | None:
        """Print `prompt` and return the next line, None at the end of input."""
        print(prompt, end="", flush=True)
        while b"\n" not in self._buffer and not self._ended:
            ready, _, _ = select.select([self.fd, self._wake], [], [])
            if self._wake in ready:  # a signal: its handler runs as this loop goes round
                os.read(self._wake, 512)
                continue
            chunk = os.read(self.fd, 65536)
            self._buffer += chunk
            self._ended = not chunk
        if not self._buffer:
            print(flush=True)
            return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if self.echo:
            print(text, flush=True)
        return text
