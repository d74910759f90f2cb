"""The ranking dialogue: one prompt and its lettered responses at a time, a line of input each.

It reads lines, so a terminal and a piped script behave the same. End of input (Ctrl-D, or the
end of a script) quits like `q`: every answer given so far is already saved.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from llmtune.data.rankings import RankingError, letters, parse_ranking


@dataclass
class Candidate:
    """One row to rank (checked when the file was read): its parsed JSON and where it is."""

    data: dict[str, Any]
    line: int
    """1-based line number in the file."""
    index: int
    """Index of its line among the file's lines (blank ones included)."""

    @property
    def ranking(self) -> str:
        text = self.data.get("ranking")
        return text.strip() if isinstance(text, str) else ""

    @property
    def name(self) -> str:
        """The row's id, or its line when it has none."""
        return str(self.data["id"]) if "id" in self.data else f"line {self.line}"


ASK = "ranking (e.g. C > B = D > A), s skip, b back, q quit, ? help: "
HELP = """\
Rank every response once, best first: '>' means better, '=' a tie.
  C > B = D > A   C is best, B and D tie, A is worst (lower case and no spaces work too)
  s               skip this prompt (it stays unranked)
  b               back to the previous prompt (type a new ranking, or Enter to keep its own)
  q               quit (every answer given is already saved; a rerun continues here)
  Enter           keep the ranking shown as current (prompts ranked before)"""
SKIP, BACK, QUIT, ASK_HELP = ("s", "skip"), ("b", "back"), ("q", "quit"), ("?", "h", "help")


Save = Callable[[Candidate, str], None]


def rank_rows(rows: list[Candidate], save: Save, *, revisit: bool = False) -> int:
    """Go through the unranked rows in file order (all rows with `revisit`), `save` each answer at
    once; return how many rows were given a ranking (a row answered twice, after `b`, counts once)."""
    queue = [row for row in rows if revisit or not row.ranking]
    if not queue:
        print("every row is ranked already (--all revisits them)", file=sys.stderr)
        return 0
    answered: set[int] = set()

    def save_and_count(row: Candidate, ranking: str) -> None:
        save(row, ranking)
        answered.add(row.line)

    position, what, reader = 0, "rows" if revisit else "unranked", LineReader()
    with reader.waking_on_signals():
        while position < len(queue):
            counter = f"[{position + 1}/{len(queue)} {what}]"
            step = _ask(save_and_count, reader, queue[position], counter, first=position == 0)
            if step is None:
                break
            position += step
    return len(answered)


def _ask(save: Save, reader: LineReader, row: Candidate, counter: str, *, first: bool) -> int | None:
    """Show `row` and read answers until one moves on: +1 (answered, kept or skipped), -1 (back),
    None (quit or end of input)."""
    _show(row, counter)
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
            return 1
        if word in BACK:
            if not first:
                return -1
            print("this is the first prompt; there is none before it", file=sys.stderr, flush=True)
            continue
        if word in ASK_HELP:
            print(HELP, flush=True)
            continue
        if not answer:
            if row.ranking:
                return 1
            print("type a ranking, or s to skip", file=sys.stderr, flush=True)
            continue
        try:
            ranking = str(parse_ranking(answer, count))
        except RankingError as exc:
            print(f"not saved: {exc}", file=sys.stderr, flush=True)
            continue
        save(row, ranking)
        print(f"saved: {ranking}", file=sys.stderr, flush=True)
        return 1


def _show(row: Candidate, counter: str) -> None:
    width = max(40, min(shutil.get_terminal_size((100, 24)).columns, 120) - 1)
    lines = ["", f"{counter} {row.name}", _wrap(_prompt_text(row.data["prompt"]), width, ""), ""]
    for letter, text in zip(letters(len(row.data["responses"])), row.data["responses"]):
        lines.append(_wrap(text.strip() or "(empty response)", width, f"{letter}) "))
    if row.ranking:
        lines += ["", f"current ranking: {row.ranking}  (Enter keeps it)"]
    print("\n".join(lines), flush=True)


def _prompt_text(prompt: object) -> str:
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
