"""`sweep: {strategy: tpe}`: Optuna's TPE sampler proposes each trial from the results so far;
Optuna's pruner stops a trial whose validation metric, reported at each evaluation during
training, is worse than earlier trials at the same step.

The study lives in <run>/study.db (SQLite), so an interrupted sweep continues with --resume:
finished trials (complete or pruned) are kept as they are and never run again; a trial that was
running when the sweep stopped is run again with the same values in the same folder (from its
last checkpoint); then the trials still owed are run, up to `trials`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmtune.console import say, table
from llmtune.errors import BadInput
from llmtune.jobs.finetune.sweep_report import TrialResult, show
from llmtune.metrics import lower_is_better
from llmtune.recipes.finetune import FinetuneRecipe, Pruning, Range, Sweep
from llmtune.runs.options import JobOptions
from llmtune.runs.rundir import RunDir

RunTrial = Callable[[FinetuneRecipe, JobOptions], dict[str, Any]]
TrialRecipe = Callable[[dict[str, Any]], FinetuneRecipe]
STUDY = "study.db"
DEFAULT_TRIALS = 8
# settings that may change when an interrupted sweep is resumed: how many trials, how long
RESUMABLE = ("trials", "timeout")


def budget(sweep: Sweep) -> int:
    """Trials the sweep runs in all (complete or pruned)."""
    return sweep.trials or DEFAULT_TRIALS


def startup_trials(sweep: Sweep) -> int:
    """Random trials before TPE models the results."""
    return sweep.startup_trials or max(2, budget(sweep) // 4)


def space_rows(sweep: Sweep) -> list[list[Any]]:
    """The search space as the plan shows it: key, what is searched."""
    rows = []
    for key, values in sweep.params.items():
        if isinstance(values, list):
            rows.append([key, f"one of {values}"])
        else:
            kind = "integer" if values.integers() else "float"
            rows.append(
                [key, f"{kind} in [{values.low}, {values.high}]" + (", log scale" if values.log else "")]
            )
    return rows


def show_plan(sweep: Sweep, metric: str) -> dict[str, Any]:
    """The --dry-run plan of a tpe sweep: search space and budget (nothing runs)."""
    table("sweep search space (dry run: nothing written)", ["parameter", "searched"], space_rows(sweep))
    say(
        f"tpe: {budget(sweep)} trials ({startup_trials(sweep)} random first), "
        f"{'minimising' if lower_is_better(metric) else 'maximising'} validation {metric}; "
        f"pruning: {_pruning_text(sweep)}; timeout: {sweep.timeout or 'none'}"
    )
    return {
        "dry_run": True,
        "strategy": "tpe",
        "space": {row[0]: row[1] for row in space_rows(sweep)},
        "trials": budget(sweep),
        "startup_trials": startup_trials(sweep),
        "timeout": sweep.timeout,
        "pruning": _pruning_text(sweep),
        "metric": metric,
    }


def check_space(sweep: Sweep, trial_recipe: TrialRecipe) -> None:
    """Every end of every range and every listed value makes a valid recipe (bad input before
    anything runs, as a grid checks each of its trials)."""
    for key, values in sweep.params.items():
        candidates = values if isinstance(values, list) else [values.low, values.high]
        for value in candidates:
            trial_recipe({key: value})


def check_resumable(run_dir: RunDir, sweep: Sweep, metric: str, where: str) -> None:
    """--resume continues the stored study only with the sweep that made it (but for `trials` and
    `timeout`); checked before the run directory opens, so a refusal changes nothing."""
    import optuna

    path = run_dir.path / STUDY
    if not path.exists():
        return
    _quiet(optuna)
    _check_study_file(path, where)
    try:
        stored = optuna.load_study(study_name="sweep", storage=_storage(path)).user_attrs.get("sweep")
    except KeyError:
        trials = run_dir.path / "trials"
        if trials.is_dir() and any(trials.iterdir()):  # trials ran, so the study was made: lost
            raise BadInput(
                f"{path} holds no study, but trials ran in {trials}: the sweep cannot be continued; "
                "start a new run (another --output)",
                file=where,
                key="--resume",
            ) from None
        return  # interrupted before the study was made
    except Exception as exc:  # noqa: BLE001 - sqlite/sqlalchemy's errors for a damaged database
        raise BadInput(
            f"{path} cannot be read as the sweep's study ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "start a new run (another --output)",
            file=where,
            key="--resume",
        ) from None
    if stored is not None and stored != _identity(sweep, metric):
        changed = sorted(
            k
            for k in set(stored) | set(_identity(sweep, metric))
            if stored.get(k) != _identity(sweep, metric).get(k)
        )
        raise BadInput(
            f"--resume needs the sweep of the interrupted run, but {', '.join(changed)} changed; only "
            f"{', '.join(RESUMABLE)} may change. Start a new run (another --output) to search otherwise",
            file=where,
            key=f"sweep.{changed[0]}",
        )


def run_study(
    sweep: Sweep,
    metric: str,
    run_dir: RunDir,
    options: JobOptions,
    run_trial: RunTrial,
    trial_recipe: TrialRecipe,
) -> list[TrialResult]:
    """Run the trials still owed (all of them on a first run) and return every trial of the study."""
    import optuna
    from optuna.trial import TrialState

    _quiet(optuna)
    study = optuna.create_study(
        study_name="sweep",
        storage=_storage(run_dir.path / STUDY),
        load_if_exists=True,
        direction="minimize" if lower_is_better(metric) else "maximize",
        pruner=_pruner(sweep),
    )
    study.set_user_attr("sweep", _identity(sweep, metric))
    _retry_unfinished(study)
    # seeded by how far the study got: a resumed sweep does not draw its first samples again
    study.sampler = optuna.samplers.TPESampler(
        seed=sweep.seed + len(study.trials), n_startup_trials=startup_trials(sweep)
    )
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    owed = budget(sweep) - len(finished)
    if finished:
        say(f"tpe: {len(finished)} trial(s) finished before; {max(owed, 0)} still owed")
    if owed > 0:
        objective = _Objective(sweep, metric, run_dir.path, options, run_trial, trial_recipe)
        study.optimize(
            objective,
            n_trials=owed,
            n_jobs=sweep.n_jobs,
            callbacks=[_stop_after(sweep.timeout, time.monotonic())],
        )
    return _results(study, run_dir.path)


class _Objective:
    """One Optuna trial: sample the values, run the fine-tune in its folder, report evaluations."""

    def __init__(
        self,
        sweep: Sweep,
        metric: str,
        root: Path,
        options: JobOptions,
        run_trial: RunTrial,
        trial_recipe: TrialRecipe,
    ) -> None:
        self.sweep, self.metric, self.root = sweep, metric, root
        self.options, self.run_trial, self.trial_recipe = options, run_trial, trial_recipe

    def __call__(self, trial: Any) -> float:
        import optuna

        from llmtune.runs.training import evaluations_heard_by

        folder = trial.user_attrs.get("folder") or self._new_folder(trial)
        trial.set_user_attr("folder", folder)  # first: a retry after an interrupt finds it
        changes = {key: _suggest(trial, key, values) for key, values in self.sweep.params.items()}
        recipe = self.trial_recipe(changes)
        retry = trial.user_attrs.get("retry_of")
        say(
            f"trial {trial.number} in {folder}: {show(changes)}"
            + (f" (retry of trial {retry})" if retry is not None else "")
        )
        path = self.root / folder
        earlier = RunDir(path, recipe)
        if earlier.finished():  # the run ended but the sweep stopped before Optuna heard of it
            summary = earlier.stored_manifest()["summary"]  # type: ignore[index]
            pruned_at = None
        else:
            report = _Report(trial, self.metric, pruning=self.sweep.pruning is not False)
            options = JobOptions(
                output=path, resume=earlier.stored_manifest() is not None, debug=self.options.debug
            )
            with evaluations_heard_by(report):
                summary = self.run_trial(recipe, options)
            pruned_at = report.pruned_at
        value = (summary.get("validation") or {}).get(self.metric)
        trial.set_user_attr("steps", summary.get("steps"))
        trial.set_user_attr("validation", value)
        if pruned_at is not None:
            raise optuna.TrialPruned(f"validation {self.metric} at step {pruned_at}")
        if value is None:
            raise BadInput(f"trial {trial.number} reported no validation {self.metric}", key="sweep.metric")
        return float(value)

    def _new_folder(self, trial: Any) -> str:
        # retries reuse their trial's folder, so new trials number the folders without gaps
        fresh = [
            t
            for t in trial.study.get_trials(deepcopy=False)
            if "retry_of" not in t.user_attrs and t.number < trial.number
        ]
        return f"trials/{len(fresh):03d}"


class _Report:
    """The evaluation hook: each validation during training goes to the Optuna trial; True (stop
    training) when the pruner says the trial is worse than earlier ones at this step."""

    def __init__(self, trial: Any, metric: str, *, pruning: bool) -> None:
        self.trial, self.metric, self.pruning = trial, metric, pruning
        self.pruned_at: int | None = None

    def __call__(self, step: int, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.metric)
        if value is None:
            return False
        self.trial.report(float(value), step)
        if self.pruning and self.trial.should_prune():
            self.pruned_at = step
            return True
        return False


def _suggest(trial: Any, key: str, values: list[Any] | Range) -> Any:
    if isinstance(values, list):
        return trial.suggest_categorical(key, values)
    if values.integers():
        return trial.suggest_int(key, int(values.low), int(values.high), log=values.log)
    return trial.suggest_float(key, values.low, values.high, log=values.log)


def _retry_unfinished(study: Any) -> None:
    """A trial left running (the sweep was interrupted; this process holds the run's lock, so no
    other one runs it) is marked failed, and each failed trial is queued once more with the same
    values and folder: the next trials Optuna hands out."""
    from optuna.trial import TrialState

    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for failed in (t for t in trials if t.state == TrialState.FAIL and t.number not in retried):
        attrs = {
            "retry_of": failed.number,
            **({"folder": failed.user_attrs["folder"]} if "folder" in failed.user_attrs else {}),
        }
        study.enqueue_trial(failed.params, user_attrs=attrs)
        say(f"tpe: trial {failed.number} did not finish; it runs again with the same values")


def _results(study: Any, root: Path) -> list[TrialResult]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    states = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    out = []
    for t in trials:
        if t.state not in states:
            continue  # queued, never started
        state = "retried" if t.number in retried else states[t.state]
        value = t.value if t.state == TrialState.COMPLETE else t.user_attrs.get("validation")
        folder = root / t.user_attrs.get("folder", "trials")
        out.append(TrialResult(t.number, dict(t.params), value, state, folder, t.user_attrs.get("steps")))
    return out


def _stop_after(seconds: float | None, started: float) -> Callable[[Any, Any], None]:
    """An Optuna callback: no new trial once `seconds` have passed (the running one finishes)."""

    def check(study: Any, trial: Any) -> None:
        if seconds is not None and time.monotonic() - started >= seconds:
            say(f"tpe: timeout of {seconds:g} s reached; no new trial starts")
            study.stop()

    return check


def _pruner(sweep: Sweep) -> Any:
    from optuna.pruners import NopPruner, PercentilePruner

    if sweep.pruning is False:
        return NopPruner()
    settings = sweep.pruning if isinstance(sweep.pruning, Pruning) else Pruning()
    return PercentilePruner(
        settings.percentile, n_startup_trials=settings.min_trials, n_warmup_steps=settings.warmup_steps
    )


def _pruning_text(sweep: Sweep) -> str:
    if sweep.pruning is False:
        return "off"
    s = sweep.pruning if isinstance(sweep.pruning, Pruning) else Pruning()
    return f"worse than the {s.percentile:g}th percentile after {s.min_trials} finished trial(s), from step {s.warmup_steps}"


def _identity(sweep: Sweep, metric: str) -> dict[str, Any]:
    """What makes a study this sweep's: all settings but those --resume may change."""
    return {**sweep.model_dump(mode="json", exclude=set(RESUMABLE)), "metric": metric}


def _storage(path: Path) -> Any:
    """The study's SQLite storage at exactly `path`: connected through sqlite3 with the path as it
    is, never parsed as a URL (a folder named `a?b` or `x%2Fy` would send a URL elsewhere)."""
    import sqlite3

    import optuna

    real = str(path.resolve())
    return optuna.storages.RDBStorage(
        url="sqlite://", engine_kwargs={"creator": lambda: sqlite3.connect(real)}
    )


SQLITE_HEADER = b"SQLite format 3\x00"


def _check_study_file(path: Path, where: str) -> None:
    """Refuse a study.db that is not an SQLite database (empty, truncated, another file)."""
    with path.open("rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        what = "is empty" if not header else "is not an SQLite database"
        raise BadInput(
            f"{path} {what}, so the interrupted sweep cannot be continued from it; start a new run "
            "(another --output), or move the file away and rerun without --resume",
            file=where,
            key="--resume",
        )


def _quiet(optuna: Any) -> None:
    # llmtune prints its own line per trial; Optuna's INFO lines would say it twice
    optuna.logging.set_verbosity(optuna.logging.WARNING)
