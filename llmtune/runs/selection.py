"""How a training run chose the model it kept: whether early stopping fired (at which step, on
which metric), which checkpoint was kept, and on how many validation rows. Read off the trainer
after `train()`, put in the summary and report.md, and used to name the real cause when a run
ended after few steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune.runs.training import min_validation_rows, selects_checkpoint


def model_selection(trainer: Any, training: Any) -> dict[str, Any] | None:
    """{validation_rows, metric, early_stopping, stopped_at, kept, best} for a run with a
    validation split; None without one. `training` is the recipe's Training section (or None
    for a job whose trainer settings are not a recipe's Training)."""
    from transformers import EarlyStoppingCallback

    if trainer.eval_dataset is None:
        return None
    rows = len(trainer.eval_dataset)
    state, args = trainer.state, trainer.args
    asked = bool(training is not None and getattr(training, "early_stopping", None))
    stopper = next(
        (c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)), None
    )
    fired = stopper is not None and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience
    if stopper is not None:
        early = "fired" if fired else "did not fire"
    elif asked and not selects_checkpoint(training, True, rows):
        early = f"off: {rows} validation rows, fewer than {min_validation_rows(training)}"
    else:
        early = "not asked for"
    best = state.best_model_checkpoint if args.load_best_model_at_end else None
    return {
        "validation_rows": rows,
        "metric": args.metric_for_best_model,
        "early_stopping": early,
        "stopped_at": state.global_step if fired else None,
        "planned_steps": state.max_steps,
        "kept": Path(best).name if best else f"the last step ({state.global_step})",
        "best": state.best_metric if best else None,
        "patience": stopper.early_stopping_patience if stopper is not None else None,
    }


def selection_markdown(selection: dict[str, Any] | None) -> list[str]:
    """The report's "Model selection" section (nothing for a run without validation rows)."""
    if not selection:
        return []
    s = selection
    early = s["early_stopping"]
    if s["stopped_at"] is not None:
        early = (
            f"fired at step {s['stopped_at']} of {s['planned_steps']} ({s['metric']} did not improve "
            f"for {s['patience']} evaluations)"
        )
    kept = s["kept"]
    if s["best"] is not None:
        kept += f", the best {s['metric']} ({s['best']:.4g})"
    elif s["metric"] is None:
        kept += ": the validation split is too small to choose a checkpoint on"
    return [
        "## Model selection",
        "",
        f"- validation rows: {s['validation_rows']}",
        f"- early stopping: {early}",
        f"- model kept: {kept}",
        "",
    ]


def early_stop_cause(selection: dict[str, Any] | None) -> str | None:
    """The real reason a run took few steps when early stopping ended it, for the warning."""
    if not selection or selection["stopped_at"] is None:
        return None
    s = selection
    return (
        f"early stopping ended training at step {s['stopped_at']} of {s['planned_steps']}: "
        f"{s['metric']} did not improve for {s['patience']} evaluations on {s['validation_rows']} "
        "validation rows, and the best checkpoint was kept. If the model is undertrained, raise "
        "training.early_stopping.patience, or evaluate on more validation rows"
    )
