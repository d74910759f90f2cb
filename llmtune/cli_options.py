"""The options of the job verbs, declared once: `llmtune.cli` lists the verbs and takes their
options from here (the shared ones first, then those of one verb), so that a flag's name, metavar
and --help text are written in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

RecipeArg = Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe YAML file.", show_default=False)]


def set_option(example: str) -> Any:
    """--set KEY=VALUE, with an example key of the verb's own recipe kind."""
    return typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help=f"Override one recipe key after extends (the value is YAML), e.g. --set {example}. Repeatable.",
    )


RunDirOpt = Annotated[
    Optional[Path],
    typer.Option("--output", metavar="DIR", help="Run directory, instead of the recipe's output.dir."),
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Validate everything and print the plan; write nothing.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout at the end.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and library logs.")]
FailUnderOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--fail-under",
        metavar="METRIC=VALUE",
        help="Quality gate: exit 1 when the test METRIC (prompt-eval: the best pair's) is below VALUE; "
        "METRIC@COLUMN=VALUE gates every slice of COLUMN, METRIC@COLUMN=SLICE=VALUE one. Repeatable.",
    ),
]
# jobs without checkpoints accept --resume (the SPEC's shared options) but do not offer it
NoResumeOpt = Annotated[bool, typer.Option("--resume", hidden=True)]

SetTrainingOpt = Annotated[Optional[list[str]], set_option("training.learning_rate=2e-5")]
SetPromptEvalOpt = Annotated[Optional[list[str]], set_option("data.limit=100")]
SetBulkInferOpt = Annotated[Optional[list[str]], set_option("batching.batch_size=32")]


# ------------------------------------------------------------------ one verb's own
SweepOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--sweep", metavar="FILE", help="Sweep file: search hyperparameters on the validation metric."
    ),
]
OutputFileOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--output", metavar="FILE", help="Output file (.jsonl, .csv, .parquet), instead of output.path."
    ),
]
ShardOpt = Annotated[
    Optional[str],
    typer.Option("--shard", metavar="I/N", help="Process a stable 1/N of the ids (0 <= I < N)."),
]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", metavar="N", help="Process at most N new rows.")]
RefreshOpt = Annotated[
    Optional[str],
    typer.Option("--refresh", metavar="stale", help="Recompute rows made with another model or prompt."),
]
MergeShardsOpt = Annotated[
    bool, typer.Option("--merge-shards", help="Join the shards' part files into the output.")
]
RecipesArg = Annotated[list[Path], typer.Argument(help="Recipe files.", show_default=False)]
PrintOpt = Annotated[
    bool, typer.Option("--print", help="Print each resolved recipe (the default for one file).")
]
KindArg = Annotated[
    str, typer.Argument(metavar="KIND", help="finetune | distill | rlhf | prompt-eval | bulk-infer")
]
StarterFileArg = Annotated[
    Optional[Path], typer.Argument(metavar="FILE", help="Write here (default: stdout).")
]
StageOpt = Annotated[
    Optional[str], typer.Option("--stage", help="rlhf: collect | reward | policy | dpo | kto.")
]
FullOpt = Annotated[bool, typer.Option("--full", help="Every key, not only the ones to edit first.")]
FromDataOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--from",
        metavar="DATA",
        help="Fit the starter to this data file: its columns, labels, task and split.",
    ),
]
SchemaKindArg = Annotated[Optional[str], typer.Argument(help="Recipe kind (default: all kinds).")]
