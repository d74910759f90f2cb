"""bulk-infer's progress: a rich bar with rows/s and ETA on a terminal, plain periodic log lines
(cron, CI) elsewhere; and the summary at the end. Always on stderr, so stdout stays free for
--json."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from llmtune.console import say, stderr_is_terminal, table
from llmtune.jobs.bulk_infer.paths import OutputPaths

LOG_EVERY_S = 10.0


@dataclass
class Tally:
    """What happened to the rows of this run."""

    done: int = 0
    failed: int = 0
    too_long_skipped: int = 0
    new_tokens: int = 0
    started: float = field(default_factory=time.monotonic)


class Progress:
    """Rows done out of `total`, with rows/s, generated tokens/s and the time left."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._last_log = self.started
        self._bar: Any = None
        if stderr_is_terminal() and total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("bulk-infer"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
                console=Console(stderr=True),  # stdout belongs to --json
            )
            self._task = self._bar.add_task("rows", total=total, rate="")
            self._bar.start()

    def advance(self, rows: int, new_tokens: int) -> None:
        """Count `rows` more rows done; `new_tokens` is the run's generated-token total."""
        self.done += rows
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-9)
        rate = f"{self.done / elapsed:.1f} rows/s"
        if new_tokens:  # classification generates no tokens
            rate += f", {new_tokens / elapsed:.0f} tok/s"
        if self._bar is not None:
            self._bar.update(self._task, advance=rows, rate=rate)
        elif now - self._last_log >= LOG_EVERY_S or self.done == self.total:
            self._last_log = now
            left = (self.total - self.done) / max(self.done / elapsed, 1e-9)
            say(f"{self.done}/{self.total} rows, {rate}, ETA {_duration(left)}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def summarise(
    paths: OutputPaths, plan: dict[str, Any], tally: Tally, skipped: int, left: int
) -> dict[str, Any]:
    """The numbers of the run, printed as a table on stderr; also the --json summary."""
    seconds = max(time.monotonic() - tally.started, 1e-9)
    summary = {
        "output": str(paths.results if paths.shard is None else paths.journal),
        "errors_file": str(paths.errors),
        "rows_done": tally.done,
        "rows_skipped": skipped,
        "rows_duplicate": plan["duplicate_rows"],
        "rows_left_for_next_run": left,
        "rows_too_long_skipped": tally.too_long_skipped,
        "rows_failed": tally.failed,
        "seconds": round(seconds, 2),
        "rows_per_s": round(tally.done / seconds, 2),
        "generated_tokens": tally.new_tokens,
        "generated_tokens_per_s": round(tally.new_tokens / seconds, 1),
        "model_fingerprint": plan["model_fingerprint"],
        "prompt_fingerprint": plan["prompt_fingerprint"],
        "exit_code": 3 if tally.failed else 0,
    }
    # classification generates nothing: no "0 tokens/s" line on the terminal (the JSON keeps it)
    hidden = {"exit_code"} | (
        {"generated_tokens", "generated_tokens_per_s"} if not tally.new_tokens else set()
    )
    table("bulk-infer summary", ["item", "value"], [[k, v] for k, v in summary.items() if k not in hidden])
    return summary
