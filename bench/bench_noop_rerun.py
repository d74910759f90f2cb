"""Benchmark: a cron rerun of bulk-infer with nothing new, whole process.

The quickstart model labels data/sentiment/inbox.jsonl (60 reviews) once per engine; then the
same command runs again `--reruns` times with no new rows, timed from start to exit, and once
more under `python -X importtime` to list what it imported (it must not import torch).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_noop_rerun.py [--model DIR] [--reruns 3]

Writes bench/results/noop_rerun.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_engines import commit, machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reruns", type=int, default=3)
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "quickstart" / "model")
    args = parser.parse_args()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-noop-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LLMTUNE_ONNX_CACHE": str(work / "cache")}
    rows = []
    for engine in ("hf", "onnx"):
        recipe = work / f"{engine}.yaml"
        recipe.write_text(
            json.dumps(
                {
                    "kind": "bulk-infer",
                    "model": {"path": str(args.model)},
                    "input": {"path": str(ROOT / "data/sentiment/inbox.jsonl"), "id_column": "id"},
                    "template": "{{ review }}",
                    "task": "classify",
                    "engine": engine,
                    "output": {"path": str(work / f"{engine}.jsonl")},
                }
            )
        )
        command = [sys.executable, "-m", "llmtune", "bulk-infer", str(recipe)]
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        first = time.perf_counter() - started
        times = []
        for _ in range(args.reruns):
            started = time.perf_counter()
            subprocess.run(command, env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - started)
        traced = subprocess.run(
            [sys.executable, "-X", "importtime", *command[1:]], env=env, capture_output=True, text=True
        )
        imported = {line.rsplit("|", 1)[-1].strip() for line in traced.stderr.splitlines() if "|" in line}
        heavy = sorted(imported & {"torch", "transformers", "onnxruntime", "peft", "datasets"}) or ["none"]
        rows.append(
            [
                f"engine {engine}",
                f"{first:.1f}",
                f"{min(times):.2f}",
                f"{sorted(times)[len(times) // 2]:.2f}",
                ", ".join(heavy),
            ]
        )
    load_after = os.getloadavg()
    lines = [
        "# bulk-infer: a cron rerun with nothing new, whole process",
        "",
        f"- commit: {commit()}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {machine()}",
        f"- load average (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in load_before)} before, {', '.join(f'{x:.1f}' for x in load_after)} after",
        f"- model: {args.model}; 60 reviews (data/sentiment/inbox.jsonl); {args.reruns} reruns",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        "",
        "| engine | first run, s (labels 60 rows) | no-op rerun, best s | no-op rerun, median s | heavy modules the rerun imported |",
        "|---|---|---|---|---|",
        *["| " + " | ".join(r) + " |" for r in rows],
    ]
    out = ROOT / "bench" / "results" / "noop_rerun.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
