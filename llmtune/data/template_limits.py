"""What one row's template may cost: the limits (text size, integer size, time) and the
deadline that stops a render running past its time. `llmtune.data.templates` enforces them."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

MAX_PROMPT_CHARS = 1_000_000
"""Longest text (and longest list) a template may build for one row."""
MAX_RENDER_SECONDS = 5.0
"""Longest time rendering one row may take."""
MAX_INT_BITS = 1 << 16
"""Largest integer a template may compute (so that `9 ** 9 ** 9` cannot run for hours)."""


class TemplateLimit(Exception):
    """A template went over one of the limits above (a user error: BadInput for the row)."""


class Deadline:
    """Stops a render that runs past MAX_RENDER_SECONDS: a SIGALRM timer in the main thread
    interrupts even a loop that prints nothing; elsewhere the time is checked between chunks."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self._armed = False
        self._timer = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM")

    def __enter__(self) -> Deadline:
        if self._timer:
            self._previous = signal.signal(signal.SIGALRM, self._fire)
            self._armed = True
            self._outer = signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def _fire(self, signum: int, frame: Any) -> None:
        if self._armed:
            raise self._expired()

    def _expired(self) -> TemplateLimit:
        return TemplateLimit(
            f"rendering took more than {self.seconds:g} s, the limit per row; a loop that does not end?"
        )

    def check(self) -> None:
        if time.monotonic() > self.ends:
            raise self._expired()

    def __exit__(self, *exc: object) -> None:
        if self._timer:
            self._armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous if self._previous is not None else signal.SIG_DFL)
            if self._outer[0] > 0:  # someone else's timer was running: give it back what is left
                left = self._outer[0] - (self.seconds - (self.ends - time.monotonic()))
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), self._outer[1])
