"""Where a published number came from: the header every results file in bench/results/ starts
with (commit, date, machine with its cores and CPU flags, load before and after, the exact
command). Used by tools/results.py and the bench scripts."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the CPU flags that decide how fast torch runs on a CPU (the rest of /proc/cpuinfo is noise here)
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "neon")


def commit() -> str:
    """HEAD's short hash, with `+changes` when the work tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" +changes" if dirty else "")


def machine() -> str:
    """CPU model, cores this process may use, and which ISA flags it has."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    has = [f for f in ISA_FLAGS if f in flags]
    return f"{model}, {cores} cores, ISA flags: {' '.join(has) or 'none of ' + ' '.join(ISA_FLAGS)}"


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def versions() -> str:
    import torch
    import transformers

    return f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"


def header(title: str, command: list[str], load_before: str, started: datetime) -> str:
    """The provenance block of one results file (Markdown)."""
    return "\n".join(
        [
            f"# {title}",
            "",
            f"- commit: {commit()}",
            f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')} (written {now().strftime('%H:%M UTC')})",
            f"- machine: {machine()}; {versions()}",
            f"- load average (1, 5, 15 min): {load_before} before, {load()} after",
            f"- command: `{shlex.join(command)}`",
            "",
        ]
    )


def now() -> datetime:
    return datetime.now(UTC)


def this_command() -> list[str]:
    """How this script was started, as a reader would retype it."""
    return ["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]
