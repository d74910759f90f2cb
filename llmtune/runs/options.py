"""What the command line hands to a job: the options every verb shares and the few that only
one verb has, typed (the CLI fills them; jobs read them; nothing below the CLI imports it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class JobOptions:
    """Command-line options a job receives."""

    output: Path | None = None
    """--output: the run directory (bulk-infer: the output file), instead of the recipe's."""
    resume: bool = False
    """--resume: continue an interrupted training run from its last checkpoint."""
    dry_run: bool = False
    """--dry-run: validate everything and print the plan; write nothing."""
    json: bool = False
    """--json: one JSON summary on stdout at the end."""
    debug: bool = False
    """--debug / LLMTUNE_DEBUG=1: tracebacks and library logs."""
    sweep: Path | None = None
    """finetune --sweep FILE: a hyper-parameter search instead of one run."""
    fail_under: list[str] = field(default_factory=list)
    """finetune / prompt-eval --fail-under METRIC=VALUE, METRIC@COLUMN=VALUE or
    METRIC@COLUMN=SLICE=VALUE: the quality gate."""
    shard: str | None = None
    """bulk-infer --shard I/N."""
    limit: int | None = None
    """bulk-infer --limit N: at most N new rows."""
    refresh: str | None = None
    """bulk-infer --refresh stale."""
    merge_shards: bool = False
    """bulk-infer --merge-shards."""
    log_file: Path | None = None
    """Set by the lifecycle once the run directory exists: where a crash's traceback goes."""
