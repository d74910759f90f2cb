"""The end of a sweep, whatever its strategy: the trials table, the best trial's recipe
(best.yaml), sweep.json, and report.md with the importance of each parameter (Optuna's fANOVA
evaluator over the completed trials)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmtune.console import markdown_table, say, table
from llmtune.errors import BadInput
from llmtune.metrics import lower_is_better
from llmtune.recipes.finetune import FinetuneRecipe, Range
from llmtune.runs.rundir import RunDir


@dataclass
class TrialResult:
    """One trial as the table, sweep.json and the best-trial choice see it."""

    trial: int
    changes: dict[str, Any]
    value: float | None
    """The validation metric the trial ended with (a pruned trial: where it was stopped)."""
    state: str
    """complete | pruned | failed | retried (interrupted, then run again as another trial)."""
    run_dir: Path
    steps: int | None = None

    def as_dict(self, metric: str) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "changes": self.changes,
            metric: self.value,
            "state": self.state,
            "steps": self.steps,
            "run_dir": str(self.run_dir),
        }


def summarise(
    results: list[TrialResult],
    metric: str,
    run_dir: RunDir,
    space: dict[str, list[Any] | Range],
    recipe_of: Callable[[dict[str, Any]], FinetuneRecipe],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Print the table, write best.yaml, sweep.json and report.md; the sweep's summary. Only a
    completed trial can be the best: a pruned one stopped before its end, a failed one has no
    result."""
    scored = [r for r in results if r.state == "complete" and r.value is not None]
    if not scored:
        raise BadInput(f"no trial completed with a validation {metric}", key="sweep.metric")
    sign = 1 if lower_is_better(metric) else -1
    best = min(scored, key=lambda r: sign * r.value)  # type: ignore[operator]
    keys = list(space)
    rows = [
        [r.trial, *[_cell(r.changes.get(k)) for k in keys], r.value, r.state, "*" if r is best else ""]
        for r in results
    ]
    columns = ["trial", *keys, metric, "state", "best"]
    table(f"sweep results (validation {metric})", columns, rows)
    importances, why_not = parameter_importances(results, space, metric)
    best_recipe = recipe_of(best.changes)
    dump = best_recipe.model_dump(mode="json")
    dump.pop("sweep", None)
    folder = best_recipe.source.parent if best_recipe.source else "the recipe's folder"
    header = (
        f"# best trial ({best.trial}) of the sweep on validation {metric}; paths are relative to {folder}\n"
    )
    run_dir.write_text("best.yaml", header + yaml.safe_dump(dump, sort_keys=False))
    trials = [r.as_dict(metric) for r in results]
    run_dir.write_json(
        "sweep.json",
        {"metric": metric, **(extra or {}), "trials": trials, "best": best.trial, "importances": importances},
    )
    report = [f"# Sweep on validation {metric}", "", markdown_table(columns, rows)]
    report += [f"Best: trial {best.trial} ({show(best.changes)}); recipe in best.yaml", ""]
    report += ["## Parameter importance", ""]
    if importances:
        report += [
            "Share of the variation in the metric explained by each parameter (Optuna's fANOVA "
            "evaluator over the completed trials).",
            "",
            markdown_table(["parameter", "importance"], [[k, round(v, 4)] for k, v in importances.items()]),
        ]
        say("parameter importance: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
    else:
        report += [f"Not computed: {why_not}.", ""]
    run_dir.write_text("report.md", "\n".join(report))
    say(f"best: trial {best.trial} ({show(best.changes)}), {metric} {best.value:.4g}; recipe: best.yaml")
    return {
        "run_dir": str(run_dir.path),
        "metric": metric,
        **(extra or {}),
        "best": best.as_dict(metric),
        "trials": trials,
        "importances": importances,
    }


def parameter_importances(
    results: list[TrialResult], space: dict[str, list[Any] | Range], metric: str
) -> tuple[dict[str, float] | None, str]:
    """Optuna's importance of each searched parameter over the completed trials, or (None, why
    not). The trials are handed to an in-memory study, so grid and random sweeps get the same
    evaluator as tpe."""
    import optuna

    done = [r for r in results if r.state == "complete" and r.value is not None]
    varied = [k for k, v in space.items() if isinstance(v, Range) or len(v) > 1]
    if len(done) < 2:
        return None, f"{len(done)} completed trial(s); the evaluator needs at least 2"
    if not varied:
        return None, "no parameter takes more than one value"
    distributions = {k: _distribution(space[k]) for k in varied}
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no INFO line for this scratch study
    study = optuna.create_study(direction="minimize" if lower_is_better(metric) else "maximize")
    try:
        for r in done:
            params = {k: _plain(r.changes[k]) for k in varied}
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions=distributions, value=r.value)
            )
        found = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        # few trials, or a metric that did not vary: the evaluator has nothing to explain
        return None, f"Optuna's evaluator could not rank the parameters ({exc})"
    return {k: float(v) for k, v in found.items()}, ""


def _distribution(values: list[Any] | Range) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(values, list):
        return CategoricalDistribution([_plain(v) for v in values])
    if values.integers():
        return IntDistribution(int(values.low), int(values.high), log=values.log)
    return FloatDistribution(values.low, values.high, log=values.log)


def _plain(value: Any) -> Any:
    """Optuna's categorical values are plain; a grid's lists and mappings are compared as text."""
    return value if isinstance(value, str | int | float | bool | None) else repr(value)


def _cell(value: Any) -> Any:
    # learning rates such as 1.3e-05 would print as 0 at the tables' four decimals
    return f"{value:.4g}" if isinstance(value, float) else value


def show(changes: dict[str, Any]) -> str:
    """`key=value, ...` as on the command line."""
    return ", ".join(f"{k}={v}" for k, v in changes.items())
