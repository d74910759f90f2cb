"""Trainer callbacks: log lines to metrics.jsonl and the console, and stop gracefully on a signal.

Kept apart from `llmtune.runs.training` because defining them imports transformers' Trainer, which
would otherwise slow every command down, bad-input errors included.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llmtune.console import live_console, say, stderr_is_terminal
from llmtune.errors import STOP_SIGNALS
from llmtune.runs.outputs import apply_umask
from llmtune.runs.rundir import RunDir

_NOISE = (
    "total_flos",
    "eval_model_preparation_time",
    "eval_runtime",
    "eval_steps_per_second",
    "train_steps_per_second",
)


class MetricsLog(TrainerCallback):
    """Each Trainer log line goes to metrics.jsonl and, as a plain line, to the console; each saved
    checkpoint gets the user's umask."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self.started = time.monotonic()

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not logs or not state.is_world_process_zero:  # one metrics.jsonl: rank 0's
            return
        record = {
            "step": state.global_step,
            "epoch": state.epoch,
            "elapsed_s": round(time.monotonic() - self.started, 2),
            **logs,
        }
        self.run_dir.log_metrics(record)
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items() if k not in _NOISE
        )
        say(f"step {state.global_step}/{state.max_steps}: {shown}")

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # safetensors writes 0600 files: a checkpoint gets the user's umask as soon as it exists,
        # so other users and services on a shared server can read it during the run too
        if state.is_world_process_zero:
            apply_umask(Path(args.output_dir))


class GracefulStop(TrainerCallback):
    """On SIGTERM/SIGINT/SIGHUP: finish the current step, save a checkpoint, then stop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._note)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _note(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from llmtune.runs.distributed import largest

        # several ranks stop together, after the same step (a collective each step, tiny)
        self.signum = largest(self.signum or 0) or None
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True


class EvaluationReport(TrainerCallback):
    """Hands each validation during training to a hook (a sweep's pruner) and stops training,
    as max_steps would, when the hook says so. Evaluations after training (the final validation)
    are not reported: the trial's result is its summary."""

    def __init__(self, hook: Callable[[int, dict[str, float]], bool]) -> None:
        self.hook = hook
        self.training = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = False

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        if self.training and metrics and self.hook(state.global_step, metrics):
            say(f"step {state.global_step}: stopped early (the sweep pruned this trial)")
            control.should_training_stop = True


def keep_stdout_clean(trainer: Any) -> None:
    """One progress display per run. The Trainer's PrinterCallback prints log dicts on stdout
    (which --json owns) and its tqdm bars (training, and one per evaluation) fight our log lines
    on a terminal; both go. On a terminal, TrainingBar draws one rich bar for the steps, with the
    latest loss and evaluation in it, and log lines print above it; elsewhere plain lines only."""
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if stderr_is_terminal() and trainer.args.process_index == 0:
        trainer.add_callback(TrainingBar())


class TrainingBar(TrainerCallback):
    """A rich progress bar for the optimizer steps: step/total, elapsed and left, latest loss."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.progress.add_task("training", total=state.max_steps, status="")
        self.progress.update(self.task, completed=state.global_step)
        self.progress.start()
        live_console(self.progress.console)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress.update(self.task, completed=state.global_step)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        shown = [f"{k} {v:.4g}" for k, v in (logs or {}).items() if k in ("loss", "eval_loss")]
        if shown:
            self.progress.update(self.task, status=", ".join(shown))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress.update(self.task, completed=state.global_step)
        self.progress.stop()
        live_console(None)
