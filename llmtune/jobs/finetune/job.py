"""Which fine-tune a recipe asks for: a sweep of trials, or one run of its task; and the quality
gate (`--fail-under`) on the finished run's test metrics, overall or per slice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput, GateFailed
from llmtune.models.loading import quiet_libraries
from llmtune.recipes.finetune import TASK_METRICS, FinetuneRecipe
from llmtune.runs.options import JobOptions
from llmtune.slices import GATE_KEY, Gate, gate_failures, gates_summary, parse_gates


def run(recipe: FinetuneRecipe, options: JobOptions) -> dict[str, Any]:
    """Run one fine-tune, or a sweep of them, from a validated recipe; returns the summary."""
    quiet_libraries(options.debug)
    gates = finetune_gates(recipe, options)  # a bad gate is refused before anything loads
    if options.sweep is not None or recipe.sweep is not None:
        from llmtune.jobs.finetune.sweep import run as run_sweep

        return run_sweep(recipe, options, run_trial=run_one)
    summary = run_one(recipe, options)
    if gates and not summary.get("dry_run"):
        apply_gates(gates, summary)
    return summary


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


def finetune_gates(recipe: FinetuneRecipe, options: JobOptions) -> list[Gate]:
    """--fail-under checked against the recipe: a metric the task reports on its test split
    (higher is better), a column of evaluation.slices, a test split to measure, and no sweep."""
    if not options.fail_under:
        return []
    gates = parse_gates(options.fail_under, TASK_METRICS[recipe.task], recipe.evaluation.slices)
    src = str(recipe.source) if recipe.source else None
    if options.sweep is not None or recipe.sweep is not None:
        raise BadInput(
            "a sweep ranks its trials on validation rows and has no test result to gate; gate the "
            "best trial by running its best.yaml with --fail-under",
            file=src,
            key=GATE_KEY,
        )
    if recipe.task == "causal_lm" and any(g.column is not None for g in gates):
        raise BadInput(
            "slices are measured for task classification and regression; gate causal_lm runs on "
            "the whole test split (e.g. exact_match=0.5)",
            file=src,
            key=GATE_KEY,
        )
    data = recipe.data
    if data.test is None and not (data.split and data.split.test):
        raise BadInput(
            "the gate is measured on the test split: set data.test or data.split.test",
            file=src,
            key=GATE_KEY,
        )
    return gates


def apply_gates(gates: list[Gate], summary: dict[str, Any]) -> None:
    """Compare the finished run's test metrics with the gates; GateFailed (exit 1, the run stays
    recorded as completed) names the metric, slice, value and threshold of each failure.

    The metrics are eval.json's, the numbers the user reads (unrounded, slices included), else the
    summary's test headline."""
    test = summary.get("test") or {}
    eval_file = Path(summary.get("run_dir", "")) / "eval.json"
    if "run_dir" in summary and eval_file.is_file():
        test = json.loads(eval_file.read_text(encoding="utf-8")).get("metrics") or test
    failures = gate_failures(gates, {"the test split": (test, test.get("slices"))})
    summary["gate"] = gates_summary(gates, failures)
    if failures:
        raise GateFailed(failures, summary)
