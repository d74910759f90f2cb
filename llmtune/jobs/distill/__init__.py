"""`llmtune distill`: a smaller student learns from a teacher (SPEC section 3, distill).

classification (`classification.py`): soft or hard teacher labels; regression (`regression.py`):
the teacher's scores; causal_lm (`causal_lm.py`): teacher generations (`sequences`), token
distributions (`logits`) or the student's own generations scored by the teacher (`on_policy`).
Each is a job of the shared training run; what they share (reading rows, building the student,
the plan, predictions.jsonl) is in `common.py`, the input checks in `checks.py`. The teacher's
outputs go through the shared inference engine into a resumable journal (`labelling.py`); the
losses are in `losses.py` and `lm_losses.py`; the side-by-side measurements and the report in
`compare.py` (classification) and `reports.py` (regression, causal_lm).
"""

from __future__ import annotations

from typing import Any

from llmtune.recipes.distill import DistillRecipe
from llmtune.runs.options import JobOptions


def run(recipe: DistillRecipe, options: JobOptions) -> dict[str, Any]:
    """Distill the recipe's teacher into its student; returns the summary (for --json)."""
    from llmtune.models.loading import quiet_libraries
    from llmtune.runs.lifecycle import run_training

    quiet_libraries(options.debug)
    if recipe.task == "classification":
        from llmtune.jobs.distill.classification import ClassificationDistill as Job
    elif recipe.task == "regression":
        from llmtune.jobs.distill.regression import RegressionDistill as Job
    else:
        from llmtune.jobs.distill.causal_lm import LanguageModelDistill as Job
    return run_training(Job(recipe), options)


__all__ = ["run"]
