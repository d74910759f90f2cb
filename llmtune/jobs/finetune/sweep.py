"""`llmtune finetune RECIPE --sweep SWEEP.yaml` (or a `sweep:` section): hyperparameter search.

Each trial is an ordinary fine-tune of the recipe with some keys changed (as `--set` would),
written to `<run>/trials/NNN/`. Trials are ranked on the validation metric; the table is printed,
saved to sweep.json and report.md, and the best trial's full recipe is saved as best.yaml.
Grid and random search need nothing more than the standard library.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmtune.console import markdown_table, say, table
from llmtune.errors import BadInput
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
    run_dir.claim(resume=options.resume)
    try:
        sweep, where = load_sweep(recipe, options.sweep)
        metric = _ranking_metric(recipe, sweep, where)
        trials = [trial_recipe(recipe, changes, where) for changes in plan_trials(sweep)]
        say(f"sweep: {len(trials)} trials ({sweep.strategy}), ranked on validation {metric}")
        if options.dry_run:
            rows = [[i, _show(changes)] for i, (changes, _) in enumerate(trials)]
            table("sweep plan (dry run: nothing written)", ["trial", "changes"], rows)
            run_dir.abandon()
            return {"dry_run": True, "trials": [c for c, _ in trials], "metric": metric}
    except BaseException:
        run_dir.abandon()
        raise
    return recorded(
        run_dir,
        options,
        [],
        lambda: _summarise(_run_trials(trials, run_dir.path, options, metric, run_trial), metric, run_dir),
    )


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
    from llmtune.recipes.validate import problems_from

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
    if values.log:
        return float(f"{math.exp(rng.uniform(math.log(values.low), math.log(values.high))):.4g}")
    return float(f"{rng.uniform(values.low, values.high):.4g}")


def trial_recipe(recipe: FinetuneRecipe, changes: dict[str, Any], where: str) -> tuple[dict, FinetuneRecipe]:
    """The recipe with `changes` applied as --set applies them, validated (without its sweep)."""
    try:
        trial = with_changes(recipe, {"sweep": None, **changes}, where)
    except BadInput as exc:
        raise BadInput(
            f"trial {_show(changes)} is not a valid recipe: {exc}", file=where, key="params"
        ) from None
    trial.name = recipe.name
    return changes, trial  # type: ignore[return-value]


def _run_trials(
    trials: list[tuple[dict, FinetuneRecipe]],
    root: Path,
    options: JobOptions,
    metric: str,
    run_trial: RunTrial,
) -> list[dict[str, Any]]:
    results = []
    for i, (changes, trial) in enumerate(trials):
        say(f"trial {i + 1}/{len(trials)}: {_show(changes)}")
        folder = root / "trials" / f"{i:03d}"
        trial_options = JobOptions(output=folder, resume=options.resume, debug=options.debug)
        if options.resume and (folder / "manifest.json").exists() and RunDir(folder, trial).finished():
            import json

            summary = json.loads((folder / "manifest.json").read_text())["summary"]
        else:
            summary = run_trial(trial, trial_options)
        value = (summary.get("validation") or {}).get(metric)
        results.append(
            {"trial": i, "changes": changes, metric: value, "run_dir": str(folder), "_recipe": trial}
        )
    return results


def _summarise(results: list[dict[str, Any]], metric: str, run_dir: RunDir) -> dict[str, Any]:
    lower_is_better = metric.endswith("loss")
    scored = [r for r in results if r[metric] is not None]
    if not scored:
        raise BadInput(f"no trial reported validation {metric}", key="sweep.metric")
    best = min(scored, key=lambda r: r[metric] if lower_is_better else -r[metric])
    keys = list(results[0]["changes"])
    rows = [
        [r["trial"], *[r["changes"][k] for k in keys], r[metric], "*" if r is best else ""] for r in results
    ]
    columns = ["trial", *keys, metric, "best"]
    table(f"sweep results (validation {metric})", columns, rows)
    best_recipe = best["_recipe"].model_dump(mode="json")
    best_recipe.pop("sweep", None)
    folder = best["_recipe"].source.parent if best["_recipe"].source else "the recipe's folder"
    header = f"# best trial ({best['trial']}) of the sweep on validation {metric}; paths are relative to {folder}\n"
    run_dir.write_text("best.yaml", header + yaml.safe_dump(best_recipe, sort_keys=False))
    clean = [{k: v for k, v in r.items() if k != "_recipe"} for r in results]
    run_dir.write_json("sweep.json", {"metric": metric, "trials": clean, "best": best["trial"]})
    run_dir.write_text(
        "report.md",
        f"# Sweep on validation {metric}\n\n{markdown_table(columns, rows)}\n"
        f"Best: trial {best['trial']} ({_show(best['changes'])}); recipe in best.yaml\n",
    )
    say(
        f"best: trial {best['trial']} ({_show(best['changes'])}), {metric} {best[metric]:.4g}; recipe: best.yaml"
    )
    return {
        "run_dir": str(run_dir.path),
        "metric": metric,
        "best": {k: v for k, v in best.items() if k != "_recipe"},
        "trials": clean,
    }


def _show(changes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items())
