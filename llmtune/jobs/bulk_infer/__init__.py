"""`llmtune bulk-infer`: offline inference over large files, resumable and cron-safe."""

from llmtune.jobs.bulk_infer.job import run

__all__ = ["run"]
