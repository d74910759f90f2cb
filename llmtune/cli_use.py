"""The verbs that use what runs made: `predict`, `chat` and `runs` (show, compare, clean).
Declared here so that `llmtune.cli` stays the list of verbs; `llmtune.cli` registers them.
As there, each verb hands its options to its job module and bad input becomes exit 2."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from typer.core import TyperGroup

from llmtune.cli_exit import exit_codes
from llmtune.cli_options import DebugOpt

JsonLines = Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout.")]
MaxNew = Annotated[
    Optional[int],
    typer.Option("--max-new-tokens", metavar="N", help="Causal LMs: tokens generated at most."),
]
Temperature = Annotated[
    float,
    typer.Option("--temperature", metavar="T", help="Causal LMs: 0 is greedy (the same text every time)."),
]


def _exit_codes(debug: bool) -> AbstractContextManager[None]:
    """The CLI's boundary without stop-signal handlers (nothing to stop cleanly): BadInput -> exit
    2 with its lines; Ctrl-C -> 130; a closed stdout (`| head`) -> 0; a crash -> exit 1, one line."""
    return exit_codes("", debug=debug, crashed=_crash_line, catch_signals=False, broken_pipe_ok=True)


def _crash_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)"


def _job(name: str) -> Any:
    return importlib.import_module(f"llmtune.jobs.{name}")


def predict(
    model: Annotated[
        str, typer.Argument(metavar="MODEL", help="Run directory, export, model folder or hub id.")
    ],
    texts: Annotated[
        Optional[list[str]],
        typer.Argument(metavar="[TEXT]...", help="Texts (default: one per line from stdin)."),
    ] = None,
    input_file: Annotated[
        Optional[Path],
        typer.Option(
            "--input", metavar="FILE", help="Texts from a file bulk-infer reads (jsonl, csv, parquet)."
        ),
    ] = None,
    column: Annotated[
        Optional[str], typer.Option("--column", metavar="NAME", help="--input: the column holding the text.")
    ] = None,
    as_json: JsonLines = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            metavar="hf|vllm|onnx|llamacpp",
            help="As in bulk-infer; an ONNX or GGUF export picks its own (onnx, llamacpp).",
        ),
    ] = "hf",
    max_new_tokens: MaxNew = None,
    temperature: Temperature = 0.0,
    seed: Annotated[
        Optional[int], typer.Option("--seed", metavar="N", help="Sampling seed (default: the run's).")
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Try a model on a few texts: label and probabilities, score, or generation. Writes nothing.

    \b
    llmtune predict runs/quickstart "the food was cold"
    cat texts.txt | llmtune predict runs/quickstart --json
    llmtune predict runs/quickstart --input reviews.csv --column review
    """
    job = _job("predict")
    settings = job.Settings(
        model,
        list(texts or []),
        input_file,
        column,
        as_json,
        engine,
        max_new_tokens,
        temperature,
        seed,
        debug,
    )
    with _exit_codes(debug):
        job.run(settings)


def chat(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Run directory, model folder or hub id.")],
    system: Annotated[Optional[str], typer.Option("--system", metavar="TEXT", help="System message.")] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", metavar="N", help="Tokens per reply at most.")
    ] = 512,
    temperature: Temperature = 0.0,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Sampling seed.")] = 0,
    debug: DebugOpt = False,
) -> None:
    """Talk to a causal LM with its chat template: streamed replies, /reset, /system, /save.

    \b
    llmtune chat runs/assistant
    printf 'Hello\\n/save chat.jsonl\\n' | llmtune chat runs/assistant
    """
    job = _job("chat")
    with _exit_codes(debug):
        job.run(job.Settings(model, system, max_new_tokens, temperature, seed=seed, debug=debug))


class RunsGroup(TyperGroup):
    """`llmtune runs [DIR]` lists; `runs show|compare|clean ...` are its subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """A first word that is not a subcommand (or nothing at all) means `list`."""
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


runs_app = typer.Typer(
    cls=RunsGroup,
    help="The runs under a folder: a table, one run, runs compared, disk cleaned.\n\n"
    "\b\nllmtune runs                  # the runs under runs/\n"
    "llmtune runs show runs/NAME\nllmtune runs compare runs/A runs/B\nllmtune runs clean --yes",
    rich_markup_mode=None,
    no_args_is_help=False,
)
Dir = Annotated[Path, typer.Argument(metavar="[DIR]", help="Folder of runs (default: runs/).")]


def _runs(call: Callable[[Any], None], debug: bool = False) -> None:
    with _exit_codes(debug):
        call(_job("runs_table"))


@runs_app.command("list", hidden=True)
def runs_list(folder: Dir = Path("runs"), as_json: JsonLines = False) -> None:
    """A table of the runs under DIR: kind, status, start, duration, test metric, size."""
    _runs(lambda job: job.list_runs(folder, as_json=as_json))


@runs_app.command("show")
def runs_show(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A run directory.")], as_json: JsonLines = False
) -> None:
    """One run: its summary, plan, test metrics, training log and files."""
    _runs(lambda job: job.show_run(run, as_json=as_json))


@runs_app.command("compare")
def runs_compare(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN...", help="Two or more run directories.")],
    as_json: JsonLines = False,
) -> None:
    """Test metrics side by side with 95% intervals; whether each run differs from the first by
    more than the noise (paired exact test on shared test rows, else the intervals); the recipe
    keys that differ."""
    _runs(lambda job: job.compare_runs(runs, as_json=as_json))


@runs_app.command("clean")
def runs_clean(
    folder: Dir = Path("runs"),
    yes: Annotated[bool, typer.Option("--yes", help="Delete (without it: only list).")] = False,
    as_json: JsonLines = False,
) -> None:
    """List the checkpoints completed runs no longer need; --yes deletes exactly those (only
    files runs wrote; runs that did not complete keep theirs for --resume)."""
    _runs(lambda job: job.clean_runs(folder, yes=yes, as_json=as_json))


def register(app: typer.Typer) -> None:
    """Add predict, chat and runs to the `llmtune` command."""
    app.command()(predict)
    app.command()(chat)
    app.add_typer(runs_app, name="runs")
