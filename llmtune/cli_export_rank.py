"""The verbs that take a run's results further: `export` (to the formats people deploy) and `rank`
(people rank collected outputs). Declared here so that `llmtune.cli` stays short; `llmtune.cli`
registers them, and every failure leaves through `llmtune.cli_exit`."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmtune.cli_exit import debug_wanted as _debug
from llmtune.cli_exit import exit_codes
from llmtune.cli_exit import fail as _fail
from llmtune.cli_options import DebugOpt
from llmtune.errors import (
    EXIT_BAD_INPUT,
    BadInput,
    Incomplete,
)


def register(app: typer.Typer) -> None:
    """Add `export` and `rank` to the CLI."""
    app.command()(export)
    app.command()(rank)


def export(
    run: Annotated[
        Path, typer.Argument(metavar="RUN_OR_ADAPTER", help="Run directory or model/adapter folder.")
    ],
    output: Annotated[
        Path, typer.Option("--output", metavar="DIR", help="A new or empty folder (or an earlier export).")
    ],
    fmt: Annotated[
        str,
        typer.Option("--format", metavar="hf|onnx|gguf", help="hf, onnx (ONNX Runtime) or gguf (llama.cpp)."),
    ] = "hf",
    quantize: Annotated[
        Optional[str],
        typer.Option("--quantize", help="onnx: int8 or int8-per-tensor; gguf: f16 (default), q8_0."),
    ] = None,
    merge: Annotated[
        Optional[bool],
        typer.Option("--merge/--no-merge", help="Merge an adapter into its base (default: where peft can)."),
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check the export against the trained model first.")
    ] = True,
    verify_data: Annotated[
        Optional[Path], typer.Option("--verify-data", metavar="FILE", help="JSONL rows for the check.")
    ] = None,
    threshold: Annotated[
        Optional[list[str]], typer.Option("--threshold", metavar="NAME=VALUE", help="A limit of the check.")
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Write a run's model for deployment (Hugging Face, ONNX or GGUF; docs/export.md), checked
    against the trained model before it lands (exit 1 when it differs), with a model card."""
    from llmtune.export.formats import export_run
    from llmtune.models.hub import offline_when_unreachable
    from llmtune.models.loading import quiet_libraries

    quiet_libraries(_debug(debug))
    offline_when_unreachable()  # a cached base model must not wait for network retries
    try:
        export_run(run, output, fmt, quantize, merge, verify, verify_data, threshold)
    except BadInput as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except Incomplete as exc:
        _fail(str(exc), exc.exit_code)
    print(f"wrote {output}", file=sys.stderr)


def rank(
    candidates: Annotated[Path, typer.Argument(metavar="CANDIDATES", help="JSONL rows to rank.")],
    output: Annotated[
        Optional[Path], typer.Option("--output", metavar="FILE", help="Save here; CANDIDATES stays as it is.")
    ] = None,
    revisit: Annotated[bool, typer.Option("--all", help="Also revisit rows ranked before.")] = False,
    annotator: Annotated[
        Optional[str],
        typer.Option(metavar="NAME", help="Who ranks: answers go into the row's rankings[NAME]."),
    ] = None,
    web: Annotated[bool, typer.Option("--web", help="Rank in a browser page on this machine.")] = False,
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="--web: address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="--web: port (0: a free one).")] = 0,
    stats: Annotated[bool, typer.Option("--stats", help="Print each annotator's counts, agreement.")] = False,
) -> None:
    """People rank collected outputs (C > B = D > A) in a terminal or a browser; each answer is
    saved at once, a rerun continues. --stats: how much the annotators agree."""
    saved = "every answer given is saved"
    with exit_codes(saved, quit_message=f"quit: {saved}"):
        job = importlib.import_module("llmtune.jobs.rank")
        job.main(
            candidates,
            output,
            revisit=revisit,
            annotator=annotator,
            web=web,
            host=host,
            port=port,
            stats=stats,
        )
