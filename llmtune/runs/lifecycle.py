"""The run every job goes through, and the training run that trainer-based jobs plug into.

`recorded()` is the bookkeeping every run-directory job shares: open the run directory, do the
work, and record how it ended (completed, interrupted, failed) in the manifest.

`run_training()` is the whole life of a training run, by composition: the job (a `TrainingJob`,
`runs.job`: finetune's classification, regression and SFT, the three distill tasks and the trained
rlhf stages) supplies preflight, setup, the trainer, evaluation, saving and the report; the
lifecycle does

    lock -> preflight -> setup -> dry run (plan, nothing written) or open -> measure before ->
    train (resume, graceful stop on SIGTERM/SIGINT) -> validate -> evaluate -> save -> report -> status

Two measurements every job declares (`TrainingJob` gives them defaults of "nothing to measure"):
`retain(trainer)`, its model on general data (evaluation.retain) before and after training, so
that the report shows what was forgotten; and `sources(trainer)`, rows and losses per data source
of a mixture. The lifecycle records both in the summary and eval.json, prints them and adds them
to report.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from llmtune.console import say, table
from llmtune.errors import BadInput, Interrupted
from llmtune.recipes.common import RecipeBase
from llmtune.runs.job import Metrics, Outcome, Plan, TrainingJob
from llmtune.runs.options import JobOptions
from llmtune.runs.rundir import RunDir, run_dir_path
from llmtune.runs.sources_report import forgetting, show_retain_and_sources

T = TypeVar("T")


def run_training(job: TrainingJob, options: JobOptions) -> dict[str, Any]:
    """The whole life of one training run; returns the summary (for --json). Under torchrun /
    accelerate launch every rank runs it: rank 0 alone claims, opens and writes the run
    directory and the console, and the ranks agree after each step where rank 0 may refuse
    (runs.distributed)."""
    from llmtune.runs.distributed import training_ranks

    with training_ranks(job.recipe) as world:
        if not world.main:
            options.json = False  # one summary on stdout: rank 0's
        return _run_training(job, options)


def _run_training(job: TrainingJob, options: JobOptions) -> dict[str, Any]:
    from llmtune.runs.distributed import agreed, check, fit_trainer, written_by_main
    from llmtune.runs.selection import model_selection
    from llmtune.runs.training import measured_once, resume_point, validation_metrics, watch_signals

    run_dir = RunDir(run_dir_path(job.recipe, options.output), job.recipe)
    refused = None  # a dry run writes nothing: a refused run directory is listed with the rest
    try:
        agreed(
            lambda: run_dir.claim(resume=options.resume, ranks_agree=True, dry_run=options.dry_run),
            only_main=True,
        )
    except BadInput as exc:
        if not options.dry_run:
            raise
        refused = exc

    def prepare() -> tuple[list[Path], Plan]:
        check(job.recipe)
        files = job.preflight()
        return files, job.setup(run_dir.path, dry_run=options.dry_run)

    try:
        files, plan = together(refused, lambda: agreed(prepare))
        describe(plan)
        if options.dry_run:
            show_plan(plan.as_dict())
            run_dir.abandon()
            return {"dry_run": True, **plan.as_dict()}
    except BaseException:
        run_dir.abandon()  # bad input (or a signal) before anything was written: no trace
        raise

    def train() -> dict[str, Any]:
        trainer = job.trainer(run_dir)
        before = measured_once(run_dir.path, "test_before", lambda: job.evaluate(trainer))
        if before is not None:
            say(f"test before training: {_shown(before)}")
        retained = measured_once(run_dir.path, "retain_before", lambda: job.retain(trainer))
        if retained is not None:
            say(f"retain (general data) before training: {_shown(retained)}")
        started = time.monotonic()
        fit_trainer(trainer)  # several ranks: train as one process would (runs.distributed)
        with watch_signals(trainer):
            result = trainer.train(resume_from_checkpoint=resume_point(run_dir.path, options.resume))
        outcome = Outcome(
            plan,
            steps=result.global_step,
            train_loss=result.training_loss,
            train_seconds=time.monotonic() - started,
            test_before=before,
        )
        outcome.selection = model_selection(trainer, job.recipe.training)
        if trainer.eval_dataset is not None:
            outcome.validation = validation_metrics(trainer)
            say(f"validation ({_kept(outcome.selection)}): {_shown(outcome.validation)}")
        outcome.test = job.evaluate(trainer)
        if retained is not None:
            outcome.retain = forgetting(retained, job.retain(trainer))
        outcome.sources = job.sources(trainer)
        # every rank saves and reports (a job may evaluate there: a collective); rank 0's files stay
        with written_by_main(run_dir.path) as folder:
            finish(job, trainer, run_dir if folder == run_dir.path else RunDir(folder, job.recipe), outcome)
        return outcome.as_dict(job.headline)

    return recorded(run_dir, options, files, train)


def together(refused: BadInput | None, prepare: Callable[[], T]) -> T:
    """`prepare()`, with the run directory's refusal (a dry run's) raised together with its own
    problems, or alone when everything else checks out."""
    if refused is None:
        return prepare()
    try:
        prepare()
    except BadInput as exc:
        raise BadInput(problems=[*refused.problems, *exc.problems]) from None
    raise refused


def _kept(selection: Metrics | None) -> str:
    return "model kept: " + selection["kept"] if selection else "final model"


def finish(job: TrainingJob, trainer: Any, run_dir: RunDir, outcome: Outcome) -> None:
    """After training and evaluation: model/, eval.json, the warnings and the report."""
    job.save(trainer, run_dir)
    write_eval(run_dir, outcome, job.eval_headline(outcome))
    outcome.warnings = training_warnings(outcome, run_dir.path, job.loss_is_objective)
    outcome.warnings += job.warnings(outcome)
    job.report(run_dir, outcome)
    show_retain_and_sources(run_dir, outcome)
    for line in outcome.warnings:
        say(f"warning: {line}")


def write_eval(run_dir: RunDir, outcome: Outcome, top: Metrics | None = None) -> None:
    """eval.json: the job's headline keys first (`top`, e.g. SPEC's pairwise_accuracy and
    pairwise_accuracy_before), the test split's metrics before and after training, retain and
    per-source results (written when there is any of them)."""
    evaluation: dict[str, Any] = dict(top or {})
    if outcome.test is not None:
        evaluation |= {"split": "test", "metrics": outcome.test, "before_training": outcome.test_before}
    if outcome.retain is not None:
        evaluation["retain"] = outcome.retain
    if outcome.sources:
        evaluation["sources"] = outcome.sources
    if evaluation:
        run_dir.write_json("eval.json", evaluation)


def recorded(
    run_dir: RunDir, options: JobOptions, files: list[Path], work: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Open the run directory, run `work`, and record how it ended in the manifest (a signal
    during `open` itself included). Several ranks: rank 0 opens and records, all of them work."""
    from llmtune.ranks import is_main
    from llmtune.runs.distributed import agreed

    try:
        agreed(lambda: _opened(run_dir, options, files), only_main=True)
        if is_main():  # a crash on another rank goes to that rank's own log file
            options.log_file = run_dir.log_file
        summary = work()
    except (Interrupted, KeyboardInterrupt):
        _end(run_dir, "interrupted")
        raise
    except BaseException:
        _end(run_dir, "failed")
        raise
    summary["run_dir"] = str(run_dir.path)
    if not is_main():
        return summary
    _prune(run_dir)
    run_dir.close("completed", summary=summary)
    say(f"run directory: {run_dir.path}")
    if (run_dir.path / "report.md").exists():
        say(f"report: {run_dir.path / 'report.md'}")
    return summary


def _prune(run_dir: RunDir) -> None:
    """training.keep_checkpoints, once the run has completed and saved model/."""
    from llmtune.recipes.common import Training
    from llmtune.runs.disk import prune_checkpoints

    training = getattr(run_dir.recipe, "training", None)  # jobs without training have no checkpoints
    if isinstance(training, Training) and (
        freed := prune_checkpoints(run_dir.path, training.keep_checkpoints)
    ):
        say(
            f"checkpoints: {freed / 1e6:.1f} MB freed (training.keep_checkpoints: {training.keep_checkpoints})"
        )


def _opened(run_dir: RunDir, options: JobOptions, files: list[Path]) -> None:
    run_dir.open(resume=options.resume, data_files=files)


def _end(run_dir: RunDir, status: str) -> None:
    if run_dir.manifest:
        run_dir.close(status)  # the run began: record how it ended
    else:
        run_dir.abandon()  # refused while opening (bad input): leave no trace


# fewer optimizer steps than this rarely move a pre-trained model far enough to mean anything
FEW_STEPS = 30


def training_warnings(outcome: Outcome, run_dir: Path, loss_is_objective: bool = True) -> list[str]:
    """Warnings every training run checks: too few optimizer steps, a loss that did not fall
    (unless the job's loss is not what it optimises: GRPO's is near zero by construction)."""
    import json

    from llmtune.runs.selection import early_stop_cause

    out = []
    cause = early_stop_cause(outcome.selection)
    if cause is not None and outcome.steps < FEW_STEPS:
        out.append(f"only {outcome.steps} optimizer steps: {cause}")
    elif outcome.steps < FEW_STEPS:
        out.append(
            f"only {outcome.steps} optimizer steps: too few to learn much; raise training.epochs "
            "(or max_steps), lower training.batch_size, or add data"
        )
    log = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), int | float) and loss_is_objective]
    if len(losses) >= 2:
        third = max(1, len(losses) // 3)
        first, last = sum(losses[:third]) / third, sum(losses[-third:]) / third
        if last >= first:
            out.append(
                f"the training loss did not go down ({first:.4g} at the start, {last:.4g} at the end): "
                "try another training.learning_rate"
            )
    return out


def describe(plan: Plan) -> None:
    """The trainable vs total parameter line every training run prints."""
    say(
        f"{plan.method}: training {plan.trainable_params:,} of {plan.total_params:,} parameters "
        f"({100 * plan.trainable_share:.2f}%) on {plan.device}"
    )


def show_plan(plan: dict[str, Any]) -> None:
    """The --dry-run table."""
    table("plan (dry run: nothing written)", ["item", "value"], [[k, v] for k, v in plan.items()])


def _shown(metrics: Metrics) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def source_of(recipe: RecipeBase) -> str | None:
    """The recipe file, for error messages."""
    return str(recipe.source) if recipe.source else None
