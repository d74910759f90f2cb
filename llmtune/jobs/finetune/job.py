"""Which fine-tune a recipe asks for: a sweep of trials, or one run of its task."""

from __future__ import annotations

from typing import Any

from llmtune.models.loading import quiet_libraries
from llmtune.recipes.finetune import FinetuneRecipe
from llmtune.runs.options import JobOptions


def run(recipe: FinetuneRecipe, options: JobOptions) -> dict[str, Any]:
    """Run one fine-tune, or a sweep of them, from a validated recipe; returns the summary."""
    quiet_libraries(options.debug)
    if options.sweep is not None or recipe.sweep is not None:
        from llmtune.jobs.finetune.sweep import run as run_sweep

        return run_sweep(recipe, options, run_trial=run_one)
    return run_one(recipe, options)


def run_one(recipe: FinetuneRecipe, options: JobOptions) -> dict[str, Any]:
    """One training run of the recipe's task."""
    if recipe.task == "causal_lm":
        from llmtune.jobs.finetune.sft import run as run_sft

        return run_sft(recipe, options)
    if recipe.task == "regression":
        from llmtune.jobs.finetune.regression import run as run_regression

        return run_regression(recipe, options)
    from llmtune.jobs.finetune.classification import run as run_classification

    return run_classification(recipe, options)
