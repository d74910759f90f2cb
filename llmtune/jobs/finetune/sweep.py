"""`llmtune finetune RECIPE --sweep SWEEP.yaml` (or a `sweep:` section): hyperparameter search.

Each trial is an ordinary fine-tune of the recipe with some keys changed (as `--set` would),
written to `<run>/trials/NNN/`. Trials are ranked on the validation metric; the table is printed,
saved to sweep.json and report.md (with the importance of each parameter), and the best trial's
full recipe is saved as best.yaml. Grid and random search are planned here up front; tpe asks
Optuna for each trial as the results come in (sweep_tpe.py).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llmtune.console import say, table
from llmtune.errors import BadInput
from llmtune.jobs.finetune.sweep_report import TrialResult, show, summarise
from llmtune.jobs.finetune.sweep_tpe import budget, check_resumable, check_space, run_study, show_plan
from llmtune.recipes import with_changes
from llmtune.recipes.finetune import FinetuneRecipe, Range, Sweep
from llmtune.runs.lifecycle import recorded
from llmtune.runs.options import JobOptions
from llmtune.runs.rundir import RunDir, run_dir_path

RunTrial = Callable[[FinetuneRecipe, JobOptions], dict[str, Any]]


def run(recipe: FinetuneRecipe, options: JobOptions, run_trial: RunTrial) -> dict[str, Any]:
    """Run every trial of the sweep through `run_trial` (one ordinary fine-tune) and report the
    best one."""
    run_dir = RunDir(run_dir_path(recipe, options.output), recipe)
    run_dir.claim(resume=options.resume, dry_run=options.dry_run)
    try:
        sweep, where = load_sweep(recipe, options.sweep)
        metric = _ranking_metric(recipe, sweep, where)
        recipe_of = partial(_trial_recipe_only, recipe, where)
        if sweep.strategy == "tpe":
            check_space(sweep, recipe_of)
            if options.dry_run:
                run_dir.abandon()
                return show_plan(sweep, metric)
            if options.resume:
                check_resumable(run_dir, sweep, metric, where)
            say(f"sweep: up to {budget(sweep)} trials (tpe), on validation {metric}")
        else:
            trials = [trial_recipe(recipe, changes, where) for changes in plan_trials(sweep)]
            say(f"sweep: {len(trials)} trials ({sweep.strategy}), ranked on validation {metric}")
            if options.dry_run:
                rows = [[i, show(changes)] for i, (changes, _) in enumerate(trials)]
                table("sweep plan (dry run: nothing written)", ["trial", "changes"], rows)
                run_dir.abandon()
                return {"dry_run": True, "trials": [c for c, _ in trials], "metric": metric}
    except BaseException:
        run_dir.abandon()
        raise

    def work() -> dict[str, Any]:
        if sweep.strategy == "tpe":
            results = run_study(sweep, metric, run_dir, options, run_trial, recipe_of)
        else:
            results = _run_trials(trials, run_dir.path, options, metric, run_trial, sweep.timeout)
        return summarise(results, metric, run_dir, sweep.params, recipe_of, {"strategy": sweep.strategy})

    return recorded(run_dir, options, [], work)


def _ranking_metric(recipe: FinetuneRecipe, sweep: Sweep, where: str) -> str:
    """The validation metric trials are ranked on, as the Trainer logs it."""
    if not recipe.has_validation():
        raise BadInput(
            "a sweep ranks trials on validation rows: set data.validation or data.split.validation",
            file=where,
            key="data",
        )
    try:
        return recipe.validation_metric(sweep.metric or _default_metric(recipe))
    except ValueError as exc:
        raise BadInput(str(exc), file=where, key="sweep.metric") from None


def load_sweep(recipe: FinetuneRecipe, path: Path | None) -> tuple[Sweep, str]:
    """The sweep from --sweep FILE (validated, errors with file and line) or the recipe's section."""
    if path is None:
        assert recipe.sweep is not None
        return recipe.sweep, str(recipe.source or "recipe")
    from llmtune.recipes.loader import read_recipe
    from llmtune.recipes.problems import problems_from

    raw = read_recipe(path)
    data = raw.data.get("sweep", raw.data) if isinstance(raw.data.get("sweep"), dict) else raw.data
    try:
        return Sweep.model_validate(data), str(path)
    except ValidationError as exc:
        raise problems_from(exc, raw, Sweep) from None


def _default_metric(recipe: FinetuneRecipe) -> str:
    return recipe.training.early_stopping.metric if recipe.training.early_stopping else "eval_loss"


def plan_trials(sweep: Sweep) -> list[dict[str, Any]]:
    """The key -> value changes of each trial: the grid's combinations or random samples."""
    keys = list(sweep.params)
    if sweep.strategy == "grid":
        combos = itertools.product(*(sweep.params[k] for k in keys))  # type: ignore[misc]
        trials = [dict(zip(keys, values)) for values in combos]
        return trials[: sweep.trials] if sweep.trials else trials
    rng = random.Random(sweep.seed)
    return [{k: _sample(sweep.params[k], rng) for k in keys} for _ in range(sweep.trials or 8)]


def _sample(values: list[Any] | Range, rng: random.Random) -> Any:
    if isinstance(values, list):
        return rng.choice(values)
    low, high = float(values.low), float(values.high)
    drawn = math.exp(rng.uniform(math.log(low), math.log(high))) if values.log else rng.uniform(low, high)
    if values.integers():
        return min(int(values.high), max(int(values.low), round(drawn)))
    # four significant figures read better in the table; rounding never leaves the range
    return min(high, max(low, float(f"{drawn:.4g}")))


def trial_recipe(recipe: FinetuneRecipe, changes: dict[str, Any], where: str) -> tuple[dict, FinetuneRecipe]:
    """The recipe with `changes` applied as --set applies them, validated (without its sweep)."""
    try:
        trial = with_changes(recipe, {"sweep": None, **changes}, where)
    except BadInput as exc:
        raise BadInput(
            f"trial {show(changes)} is not a valid recipe: {exc}", file=where, key="params"
        ) from None
    trial.name = recipe.name
    return changes, trial  # type: ignore[return-value]


def _trial_recipe_only(recipe: FinetuneRecipe, where: str, changes: dict[str, Any]) -> FinetuneRecipe:
    return trial_recipe(recipe, changes, where)[1]


def _run_trials(
    trials: list[tuple[dict, FinetuneRecipe]],
    root: Path,
    options: JobOptions,
    metric: str,
    run_trial: RunTrial,
    timeout: float | None,
) -> list[TrialResult]:
    results = []
    started = time.monotonic()
    for i, (changes, trial) in enumerate(trials):
        if results and timeout is not None and time.monotonic() - started >= timeout:
            say(f"sweep: timeout of {timeout:g} s reached; {len(trials) - i} trial(s) not started")
            break
        say(f"trial {i + 1}/{len(trials)}: {show(changes)}")
        folder = root / "trials" / f"{i:03d}"
        trial_options = JobOptions(output=folder, resume=options.resume, debug=options.debug)
        if options.resume and (folder / "manifest.json").exists() and RunDir(folder, trial).finished():
            summary = json.loads((folder / "manifest.json").read_text())["summary"]
        else:
            summary = run_trial(trial, trial_options)
        value = (summary.get("validation") or {}).get(metric)
        results.append(TrialResult(i, changes, value, "complete", folder, summary.get("steps")))
    return results
