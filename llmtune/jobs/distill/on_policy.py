"""`strategy: on_policy` (causal_lm): the student generates, the teacher scores its tokens.

Not built in this version: refused before anything is loaded or written."""

from __future__ import annotations

from typing import Any

from llmtune.errors import BadInput
from llmtune.recipes.distill import DistillRecipe


def check_on_policy(recipe: DistillRecipe) -> None:
    """Refuse on_policy (exit 2) with what to use instead."""
    raise BadInput(
        "strategy: on_policy is not built yet in this version; use strategy: logits (the teacher's token "
        "distributions over the data's completions) or sequences (the teacher's completions)",
        file=str(recipe.source) if recipe.source else None,
        key="strategy",
    )


def on_policy_trainer(job: Any, run_dir: Any, datasets: dict[str, Any]) -> Any:
    """TRL's DistillationTrainer over the prompts (not reached: `check_on_policy` refuses)."""
    raise NotImplementedError
