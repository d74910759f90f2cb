"""The CLI's exit-code boundary, shared by every verb module: an `error:` line per message line
and the exit code (one rank speaks under torchrun), the --debug switch, and signals turned into
`Interrupted` so that jobs stop between writes."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from llmtune.errors import Interrupted


def debug_wanted(flag: bool) -> bool:
    """--debug, or LLMTUNE_DEBUG set to anything but 0."""
    return flag or os.environ.get("LLMTUNE_DEBUG", "") not in ("", "0")


def fail(lines: str, code: int) -> None:
    """Print `error: LINE` for each line (rank 0 only) and exit with `code`."""
    from llmtune.console import quiet

    if not quiet():  # under torchrun every rank fails with rank 0's verdict; one of them says it
        try:
            for line in lines.splitlines():
                print(f"error: {line}", file=sys.stderr)
        except OSError:
            pass  # a closed terminal (SIGHUP): the exit code still says how the job ended
    raise typer.Exit(code)


def raise_interrupted(signum: int, frame: Any) -> None:
    """A signal handler: SIGTERM/SIGINT/SIGHUP become `Interrupted` (exit 128 + signum)."""
    raise Interrupted(signum)
