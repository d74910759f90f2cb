"""Human output: rich on a terminal, plain line-oriented logs elsewhere (CI, cron), always on
stderr so that stdout stays free for --json."""

from __future__ import annotations

import sys
import time
from typing import Any

from llmtune.ranks import is_main

_start = time.monotonic()
_live: Any = None  # the rich Console of a progress bar on screen: lines print above the bar


def live_console(console: Any) -> None:
    """While a progress bar is drawn, `say` and `table` print through its console (rich keeps the
    bar below them); None when it is gone."""
    global _live
    _live = console


def _console() -> Any:
    from rich.console import Console

    return _live or Console(stderr=True, highlight=False)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def quiet() -> bool:
    """Ranks other than 0 of a torchrun / accelerate launch run print nothing: one console."""
    return not is_main()


def say(message: str) -> None:
    """One progress line on stderr (rank 0's only)."""
    if quiet():
        return
    if stderr_is_terminal():
        _console().print(message, highlight=False)
    else:
        print(f"[llmtune {time.monotonic() - _start:7.1f}s] {message}", file=sys.stderr, flush=True)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A table on stderr: rich on a terminal, aligned plain text elsewhere (rank 0's only)."""
    if quiet():
        return
    cells = [[_fmt(c) for c in row] for row in rows]
    if stderr_is_terminal():
        from rich.table import Table

        t = Table(title=title)
        for col in columns:
            t.add_column(col)
        for row in cells:
            t.add_row(*row)
        _console().print(t)
        return
    widths = [max(len(str(x)) for x in col) for col in zip(columns, *cells)]
    print(title, file=sys.stderr)
    for row in [columns, *cells]:
        print("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths)), file=sys.stderr)
    sys.stderr.flush()


def _fmt(value: Any) -> str:
    """A value as people read it: no Python reprs, no trailing zeros, no None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4f}".rstrip("0").rstrip(".") if value else "0"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """The same table as Markdown, for report.md."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def shown(text: object) -> str:
    """A user-supplied string made safe for a terminal: control characters (ANSI/OSC escapes, bells,
    carriage returns) and lone surrogates are shown visibly as `\\x1b`, `\\ud83d`..., newlines and
    tabs are kept, and rich markup is escaped, so data can never move the cursor, set the title,
    write the clipboard or print a fake line. Use it for every dataset string printed."""
    from rich.markup import escape

    return escape(safe_text(text))


def safe_text(text: object) -> str:
    """`shown` for plain output (print, not rich): control characters and lone surrogates shown
    visibly, newlines and tabs kept, nothing else changed."""
    out = []
    for ch in str(text):
        code = ord(ch)
        if ch in "\n\t":
            out.append(ch)
        elif code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code <= 0xDFFF or code in (0x2028, 0x2029):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


class RowProgress:
    """One progress display for `total` rows: a rich bar (rows/s, time left) on a terminal;
    elsewhere (logs, CI) a plain line for the first rows, then at most every `every_s` seconds,
    and one at the end."""

    def __init__(self, label: str, total: int, every_s: float = 10.0) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.done = 0
        self.started = self.last_line = time.monotonic()
        self.bar: Any = None
        if stderr_is_terminal() and total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self.task = self.bar.add_task(label, total=total, rate="")
            self.bar.start()
            live_console(self.bar.console)

    def advance(self, rows: int) -> None:
        """Count `rows` more rows done."""
        self.done += rows
        now = time.monotonic()
        rate = f"{self.done / max(now - self.started, 1e-9):.1f} rows/s"
        if self.bar is not None:
            self.bar.update(self.task, advance=rows, rate=rate)
        elif self.done == rows or now - self.last_line >= self.every_s or self.done >= self.total:
            self.last_line = now
            say(f"{self.label} {self.done}/{self.total} rows ({rate})")

    def close(self) -> None:
        """Stop the bar (its last state stays on screen)."""
        if self.bar is not None:
            self.bar.stop()
            live_console(None)
