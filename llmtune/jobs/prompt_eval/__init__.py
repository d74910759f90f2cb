"""`llmtune prompt-eval`: zero-, one- and few-shot prompts x models on a labelled set."""

from llmtune.jobs.prompt_eval.job import run

__all__ = ["run"]
