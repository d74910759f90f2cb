"""The two ways a job can fail, and where they become exit codes.

`BadInput` is the one exception for anything the user gave us that is wrong (recipe, data, model
reference, template). The CLI turns it into exit code 2 with one line per problem and no
traceback. Anything else that escapes a job is a failure while running (exit code 1).
"""

from __future__ import annotations

from dataclasses import dataclass


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


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; resumable state was saved. Exit code 130 or 143."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by signal {signum}")


class JobNotBuilt(Exception):
    """The verb exists in the CLI but its job is not implemented yet (exit 1, said plainly)."""
