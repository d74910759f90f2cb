"""The CLI's exit-code boundary, shared by every verb module: an `error:` line per message line
and the exit code (one rank speaks under torchrun), the --debug switch, and signals turned into
`Interrupted` so that jobs stop between writes.

`exit_codes` is the boundary itself: the verbs that run a job (`run_job`) and `rank` do their
work inside it, and it maps what escapes to the exit-code table of `llmtune.errors`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

from llmtune.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_LOCKED,
    STOP_SIGNALS,
    BadInput,
    Incomplete,
    Interrupted,
    LockHeld,
)


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


@contextmanager
def exit_codes(
    stopped: str,
    *,
    debug: bool = False,
    quit_message: str | None = None,
    summary_json: bool = False,
    crashed: Callable[[Exception], str] | None = None,
    catch_signals: bool = True,
    broken_pipe_ok: bool = False,
) -> Iterator[None]:
    """Run the block with SIGTERM/SIGINT/SIGHUP raising `Interrupted` (the previous handlers come
    back after it), and turn what escapes into an exit code: bad input 2 (with its traceback
    under `debug`), a held lock 75, a stop signal 128 + signum (`stopped`: what the stop left,
    e.g. how to resume; `quit_message`: Ctrl-C is a person quitting, said without an error),
    an incomplete run its own code (its summary on stdout with `summary_json`), and a crash 1
    with the line `crashed(exc)` returns (without `crashed`, or under `debug`, a crash escapes).
    Without `catch_signals` the signals keep their handlers (Ctrl-C still exits 130; an empty
    `stopped` adds nothing to its line); with `broken_pipe_ok` a closed stdout (`... | head`)
    exits 0: the reader has what it wanted."""
    previous = {sig: signal.signal(sig, raise_interrupted) for sig in STOP_SIGNALS} if catch_signals else {}
    stopping = False
    try:
        yield
    except BadInput as exc:
        if debug:
            traceback.print_exc()
        fail(str(exc), EXIT_BAD_INPUT)
    except LockHeld as exc:
        fail(str(exc), EXIT_LOCKED)
    except (Interrupted, KeyboardInterrupt) as exc:
        # the process is on its way out with 128 + signum: a second stop signal from here on (a
        # supervisor repeating its SIGTERM) must not kill it with the signal's default action
        # before the exit code and the last lines are out
        stopping = True
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        if signum == signal.SIGINT and quit_message is not None:
            print(f"\n{quit_message}", file=sys.stderr)
            raise typer.Exit(128 + signum) from None
        fail(
            f"interrupted by {signal.Signals(signum).name}" + (f"; {stopped}" if stopped else ""),
            128 + signum,
        )
    except Incomplete as exc:
        if summary_json:
            print(json.dumps(exc.summary, default=str))
        fail(str(exc), exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the one boundary where a crash becomes exit 1
        if broken_pipe_ok and isinstance(exc, BrokenPipeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            raise typer.Exit(0) from None
        if crashed is None or debug:
            raise
        fail(crashed(exc), EXIT_FAILED)
    finally:
        for sig, handler in previous.items():
            # stopping: the default action (die of the signal) would replace the exit code
            signal.signal(sig, signal.SIG_IGN if stopping and handler == signal.SIG_DFL else handler)
