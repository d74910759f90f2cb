"""What every training job shares: HF TrainingArguments from the recipe, logging to
metrics.jsonl and the console, graceful stop on SIGTERM/SIGINT, and checkpoints for --resume."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from llmtune.console import say
from llmtune.errors import BadInput, Interrupted
from llmtune.metrics import lower_is_better
from llmtune.recipes.common import MIN_VALIDATION_ROWS, ModelRef, Training
from llmtune.runs.rundir import RunDir


def resolve_precision(training: Training, device: str) -> str:
    """auto -> bf16 on GPUs that support it, fp32 elsewhere; bf16/fp16 refused on CPU."""
    from llmtune.models.loading import bf16_ok

    on_cuda = device.startswith("cuda")
    if training.precision == "auto":
        return "bf16" if bf16_ok(device) else "fp32"
    if training.precision == "fp16" and not on_cuda:
        raise BadInput("precision fp16 needs a CUDA GPU; use fp32 or auto", key="training.precision")
    if training.precision == "bf16" and on_cuda and not bf16_ok(device):
        raise BadInput("this GPU does not support bf16; use fp16 or auto", key="training.precision")
    return training.precision


def preflight(model: ModelRef, method: str, training: Training) -> str:
    """Hardware rules checked before any model loads; returns the device the run will use."""
    from llmtune.models.loading import pick_device

    device = pick_device(model.device)
    if method == "qlora" and not device.startswith("cuda"):
        raise BadInput(
            f"qlora needs a CUDA GPU (4-bit bitsandbytes); this run is on {device}. "
            "Use method.type: lora on CPU",
            key="method.type",
        )
    resolve_precision(training, device)
    for tracker, package in TRACKERS.items():
        if tracker in training.report_to and importlib.util.find_spec(package) is None:
            raise BadInput(
                f"report_to {tracker} needs the {package} package: pip install {package}",
                key="training.report_to",
            )
    return device


# `auto` settings: how many optimizer steps a run aims for, and learning rates by method/task
AUTO_STEPS = 100
AUTO_EPOCHS = (3, 50)
LEARNING_RATES = {"full": 5e-5, "last_layers": 1e-4, "ia3": 5e-3, "prefix": 1e-2, "prompt": 1e-2}
LEARNING_RATES_CAUSAL_LM = {"full": 2e-5}
ADAPTER_RATE, ADAPTER_RATE_CAUSAL_LM = 1e-3, 2e-4  # lora, qlora, dora, adapter


def resolve_training(training: Training, method: str, task: str, train_rows: int) -> Training:
    """The recipe's training settings with every `auto` made concrete for this data, method and
    task (the recipe itself keeps `auto`, so --resume compares like with like)."""
    per_epoch = steps_per_epoch(training, train_rows)
    epochs = training.epochs
    if epochs == "auto":
        epochs = float(min(AUTO_EPOCHS[1], max(AUTO_EPOCHS[0], math.ceil(AUTO_STEPS / per_epoch))))
    rate = training.learning_rate
    if rate == "auto":
        causal = task == "causal_lm"
        adapter = ADAPTER_RATE_CAUSAL_LM if causal else ADAPTER_RATE
        rate = {**LEARNING_RATES, **(LEARNING_RATES_CAUSAL_LM if causal else {})}.get(method, adapter)
    steps = training.max_steps or math.ceil(epochs * per_epoch)
    logging = training.logging_steps
    if logging == "auto":
        logging = max(1, min(50, steps // 20))
    return training.model_copy(update={"epochs": epochs, "learning_rate": rate, "logging_steps": logging})


def steps_per_epoch(training: Training, train_rows: int) -> int:
    """Optimizer steps in one pass over `train_rows` rows."""
    return max(1, math.ceil(train_rows / training.batch_size) // training.grad_accum)


def planned_steps(training: Training, train_rows: int) -> int:
    """Optimizer steps the run will take (max_steps, else epochs; fewer when packing or stopping
    early). `training` must be resolved (see resolve_training)."""
    if training.max_steps:
        return training.max_steps
    assert training.epochs != "auto"
    return math.ceil(training.epochs * steps_per_epoch(training, train_rows))


TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}


@contextmanager
def watch_signals(trainer: Any) -> Iterator[None]:
    """Around `trainer.train()`: a SIGTERM/SIGINT makes the trainer save a checkpoint and stop
    after the current step (the GracefulStop callback); then Interrupted is raised."""
    from llmtune.runs.callbacks import GracefulStop

    stop = next(h for h in trainer.callback_handler.callbacks if isinstance(h, GracefulStop))
    yield
    if stop.signum is not None:
        raise Interrupted(stop.signum)


def min_validation_rows(training: Training) -> int:
    """Validation rows needed to stop early and keep the best checkpoint (early_stopping.min_rows)."""
    return training.early_stopping.min_rows if training.early_stopping else MIN_VALIDATION_ROWS


def selects_checkpoint(training: Training, has_validation: bool, validation_rows: int | None) -> bool:
    """Whether the run may choose its model on the validation split (early stopping, keeping the
    best checkpoint): it has one, and (when its size is known) one large enough to tell apart."""
    if not has_validation:
        return False
    return validation_rows is None or validation_rows >= min_validation_rows(training)


def training_arguments(
    training: Training,
    run_dir: Path,
    *,
    device: str,
    seed: int,
    has_validation: bool,
    validation_rows: int | None = None,
    extra: dict[str, Any] | None = None,
    args_class: Any = None,
) -> Any:
    """TrainingArguments (or a TRL config class) built from the recipe's `training` section,
    resolved (see resolve_training): no `auto` values left. Under torchrun / accelerate launch,
    the `distributed:` section's settings and the per-rank share of the global batch. With
    `validation_rows` below the rule (`selects_checkpoint`) the split is still evaluated, for the
    curves, but the last step's model is kept."""
    from transformers import TrainingArguments

    from llmtune.runs.distributed import trainer_arguments

    precision = resolve_precision(training, device)
    evaluate = "no"
    if has_validation:
        evaluate = "steps" if training.eval_steps else "epoch"
    watched = training.early_stopping.metric if training.early_stopping else "eval_loss"
    selecting = selects_checkpoint(training, has_validation, validation_rows)
    kwargs: dict[str, Any] = dict(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.grad_accum,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        # transformers 5 dropped warmup_ratio: a warmup_steps below 1 is read as a share of the
        # steps (the schema keeps warmup_ratio < 1, so it is never taken as a step count)
        warmup_steps=training.warmup_ratio,
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=training.gradient_checkpointing,
        eval_strategy=evaluate,
        eval_steps=training.eval_steps,
        save_strategy=evaluate if has_validation else ("steps" if training.eval_steps else "epoch"),
        save_steps=training.eval_steps,
        save_total_limit=training.save_total_limit,
        load_best_model_at_end=selecting,
        metric_for_best_model=watched if selecting else None,
        greater_is_better=None if not selecting else not lower_is_better(watched),
        logging_steps=training.logging_steps,
        # tensorboard is added by `callbacks` (it writes into the run directory, not checkpoints/)
        report_to=[t for t in training.report_to if t != "tensorboard"],
        # --resume restores early stopping's patience counter too, so that a resumed run stops
        # where the uninterrupted one would
        restore_callback_states_from_checkpoint=True,
        disable_tqdm=True,  # one progress display: llmtune's own (runs/callbacks.py)
        seed=seed,
        data_seed=seed,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
    )
    kwargs.update(trainer_arguments(training.batch_size))
    kwargs.update(extra or {})
    return (args_class or TrainingArguments)(**kwargs)


EvaluationHook = Callable[[int, dict[str, float]], bool]
"""hook(step, validation metrics) -> True to stop the training run now (as if at max_steps)."""
_evaluation_hook: ContextVar[EvaluationHook | None] = ContextVar("evaluation_hook", default=None)


@contextmanager
def evaluations_heard_by(hook: EvaluationHook) -> Iterator[None]:
    """Training runs started in this block call `hook(step, metrics)` at each validation during
    training, and stop gracefully (checkpoint, evaluation, model saved) when it returns True.
    How a sweep prunes a bad trial: the trial stays an ordinary fine-tune that knows nothing of
    sweeps, and the jobs' trainers need no extra argument."""
    token = _evaluation_hook.set(hook)
    try:
        yield
    finally:
        _evaluation_hook.reset(token)


def callbacks(
    training: Training, run_dir: RunDir, has_validation: bool, validation_rows: int | None = None
) -> list[Any]:
    """Logging, graceful stop, early stopping when asked for (and the validation split is large
    enough: `selects_checkpoint`, said on the console when it is not), and the evaluation hook of
    an enclosing `evaluations_heard_by` (a sweep's pruner)."""
    from transformers import EarlyStoppingCallback

    from llmtune.runs.callbacks import EvaluationReport, GracefulStop, MetricsLog

    watched = training.early_stopping.metric if training.early_stopping else None
    out: list[Any] = [MetricsLog(run_dir, watched), GracefulStop()]
    hook = _evaluation_hook.get()
    if hook is not None and has_validation:
        out.append(EvaluationReport(hook))
    if "tensorboard" in training.report_to:
        from transformers.integrations import TensorBoardCallback

        board = TensorBoardCallback()
        board.logging_dir = str(run_dir.path / "tensorboard")
        out.append(board)
    if "mlflow" in training.report_to:
        os.environ.setdefault("MLFLOW_TRACKING_URI", (run_dir.path / "mlruns").resolve().as_uri())
    if has_validation and not selects_checkpoint(training, has_validation, validation_rows):
        say(f"note: {too_small(training, validation_rows or 0)}")
    elif training.early_stopping and has_validation:
        out.append(EarlyStoppingCallback(early_stopping_patience=training.early_stopping.patience))
    return out


def too_small(training: Training, validation_rows: int) -> str:
    """Why the run does not choose its model on a validation split this small, and what it does."""
    stopping = "early stopping is off, and " if training.early_stopping else ""
    return (
        f"the validation split has {validation_rows} rows, fewer than {min_validation_rows(training)}: too "
        f"few to choose a checkpoint on, so {stopping}the model of the last step is kept. Give more "
        "validation rows (data.validation, or a larger data.split.validation)"
    )


def last_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint folder, for --resume."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = run_dir / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def resume_point(run_dir: Path, resume: bool) -> str | None:
    """The checkpoint --resume continues from (said on the console), or None."""
    if not resume:
        return None
    checkpoint = last_checkpoint(run_dir)
    say(f"resuming from {checkpoint}" if checkpoint else "--resume: no checkpoint yet; starting from step 0")
    return checkpoint


def measured_once(run_dir: Path, name: str, measure: Callable[[], Any]) -> Any:
    """`measure()` on the first attempt of a run, the stored value on --resume (so that a resumed
    run reports what an uninterrupted one would, e.g. test metrics before training). Several
    ranks take rank 0's answer to "stored?", so that all of them measure (it may be a
    collective) or none; rank 0 stores it."""
    from llmtune.outputs import atomic_write_text
    from llmtune.ranks import is_main
    from llmtune.runs.distributed import agreed

    path = run_dir / "checkpoints" / f"{name}.json"
    stored = agreed(
        lambda: (True, json.loads(path.read_text())) if path.exists() else (False, None), only_main=True
    )
    if stored[0]:
        return stored[1]
    value = measure()
    if is_main():
        atomic_write_text(path, json.dumps(value, default=float))
    return value


def validation_metrics(trainer: Any) -> dict[str, float]:
    """The trainer's current model on the validation split (the best one when it was kept)."""
    kept = ("_runtime", "_per_second", "_preparation_time", "epoch")
    return {k: v for k, v in trainer.evaluate().items() if not k.endswith(kept)}
