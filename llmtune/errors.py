"""How a job can end other than in success, and the exit code of each (SPEC section 1).

`BadInput` is the one exception for anything the user gave us that is wrong (recipe, data, model
reference, template): exit code 2 with one line per problem and no traceback. `LockHeld` (75),
`Interrupted` (130/143), and the two partial endings that still carry a summary (`RowsFailed`, 3;
`GateFailed`, 1) are the others. Anything else that escapes a job is a failure while running
(exit code 1). The CLI turns each into its exit code in one place (`llmtune.cli.run_job`).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1  # the job failed while running, or a quality gate was not met
EXIT_BAD_INPUT = 2
EXIT_ROWS_FAILED = 3  # bulk-infer finished, but some rows failed (they are in the errors file)
EXIT_LOCKED = 75  # another run holds the output's lock (EX_TEMPFAIL)
# interrupted: 128 + the signal's number (130 SIGINT, 143 SIGTERM, 129 SIGHUP)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""The signals that stop a job cleanly, each the same way: SIGHUP is a closed terminal or ssh."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where it is and what was expected."""

    message: str
    file: str | None = None
    line: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class BadInput(Exception):
    """Input the user can fix. Exit code 2; the message names file, line and key."""

    def __init__(
        self,
        message: str | None = None,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        problems: list[Problem] | None = None,
    ) -> None:
        self.problems = list(problems or [])
        if message is not None:
            self.problems.append(Problem(message, file=file, line=line, key=key))
        super().__init__("\n".join(str(p) for p in self.problems))


class LockHeld(Exception):
    """Another run holds the output's lock (cron overlap). Exit code 75; nothing was touched."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP arrived; what can be resumed was saved. Exit code 130, 143 or 129.

    A BaseException, like KeyboardInterrupt, so that per-row `except Exception` error handling
    can never swallow it or turn it into a failed row."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by signal {signum}")


class Incomplete(Exception):
    """The job ran to its end, but not everything succeeded; `summary` is still printed (--json)."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        self.summary = summary
        super().__init__(message)


class RowsFailed(Incomplete):
    """bulk-infer: some rows failed and went to the errors file. Exit code 3."""

    exit_code = EXIT_ROWS_FAILED


class GateFailed(Incomplete):
    """A quality gate (`--fail-under`, prompt-eval's `fail_under`) is not met: a metric, or a slice's
    metric, is below its threshold. Exit code 1; the run itself is recorded as completed."""

    def __init__(self, failures: list[str], summary: dict[str, Any]) -> None:
        super().__init__("\n".join(f"fail-under: {line}" for line in failures), summary)
