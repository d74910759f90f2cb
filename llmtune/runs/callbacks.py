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
from llmtune.outputs import apply_umask
from llmtune.runs.rundir import RunDir

# what a person reads on the console per log line; every key still goes to metrics.jsonl
SHOWN_TRAINING = ("loss", "reward", "kl")
_NOT_A_METRIC = ("_runtime", "_per_second", "_preparation_time", "epoch", "total_flos")


class MetricsLog(TrainerCallback):
    """Each Trainer log line goes to metrics.jsonl. The console gets about LINES short lines over
    a training run (progress, time left, the latest loss and validation loss and watched metric),
    and nothing for evaluations before or after training (the lifecycle says those once). Each
    saved checkpoint gets the user's umask."""

    LINES = 20

    def __init__(self, run_dir: RunDir, watched: str | None = None) -> None:
        self.run_dir = run_dir
        self.watched = watched
        self.started = time.monotonic()
        self.training = False
        self.first_step = 0
        self.train_started = self.started
        self.latest: dict[str, Any] = {}
        self.next_line = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = True
        self.first_step = state.global_step  # a resumed run counts its speed from here
        self.train_started = time.monotonic()
        self.next_line = state.global_step + 1

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = False

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
        if not self.training or "train_runtime" in logs:  # the end-of-training totals: file only
            return
        self.latest.update(logs)
        if state.global_step >= self.next_line or state.global_step >= state.max_steps:
            self.next_line = state.global_step + max(1, state.max_steps // self.LINES)
            watched = self.watched or getattr(args, "metric_for_best_model", None)
            shown = console_line(self.latest, watched)
            say(f"{progress(state, self.first_step, self.train_started)}: {shown}")


def progress(state: Any, first_step: int, started: float) -> str:
    """`step 40/100 (40%, 1m12s left)`: the time left from this run's speed so far."""
    step, total = state.global_step, max(state.max_steps, 1)
    done = step - first_step
    left = ""
    if done > 0 and step < total:
        left = f", {_duration((time.monotonic() - started) / done * (total - step))} left"
    return f"step {step}/{total} ({100 * step // total}%{left})"


def console_line(logs: dict[str, Any], watched: str | None = None) -> str:
    """The few numbers of the latest log lines a person needs: the training loss (and reward),
    the validation loss and the metric the run watches (else the first the task computes)."""
    parts = [
        f"{k} {_number(v)}"
        for k, v in logs.items()
        if k in SHOWN_TRAINING or k.endswith("/reward") or k == "rewards/mean"
    ]
    metrics = [k for k in logs if k.startswith("eval_") and not k.endswith(_NOT_A_METRIC)]
    if watched not in metrics:
        watched = next((k for k in metrics if k != "eval_loss"), None)
    keys = [k for k in ("eval_loss", watched) if k in logs]
    if keys:
        parts.append("validation " + ", ".join(f"{k.removeprefix('eval_')} {_number(logs[k])}" for k in keys))
    return ", ".join(parts) or "logged"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

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
