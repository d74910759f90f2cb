"""Benchmark: distill's student against its teacher, side by side (rows/s, latency, size, accuracy).

Runs the shipped recipes as a user would: the teacher (recipes/distill-sentiment-teacher.yaml,
all-MiniLM-L6-v2 fine-tuned on the sentiment reviews; reused from runs/ when it is there, unless
--fresh-teacher), then `llmtune distill recipes/distill-sentiment.yaml` into a scratch folder. The
distill job itself measures both models on the same test rows, batch by batch, alternating
teacher and student and keeping each batch's fastest pass (llmtune/jobs/distill/compare.py);
this script reads that from eval.json and prints the table.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_distill.py [--epochs 3] [--no-baseline]
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEACHER_RECIPE = ROOT / "recipes" / "distill-sentiment-teacher.yaml"
DISTILL_RECIPE = ROOT / "recipes" / "distill-sentiment.yaml"
TEACHER_MODEL = ROOT / "runs" / "distill-sentiment-teacher" / "model"


def llmtune(*args: str) -> float:
    """Run one llmtune command (exit on failure); returns its wall time."""
    cmd = [str(Path(sys.executable).parent / "llmtune"), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def render(comparison: dict[str, Any], seconds: float, load: tuple[float, ...]) -> str:
    cpu = next(
        x.split(":", 1)[1].strip()
        for x in Path("/proc/cpuinfo").read_text().splitlines()
        if "model name" in x
    )
    import torch
    import transformers

    on = comparison["measured_on"]
    loads = ", ".join(f"{x:.2f}" for x in load)
    lines = [
        f"Machine: {cpu}, {os.cpu_count()} cores, load average {loads} (1, 5, 15 min) at the start; "
        f"torch {torch.__version__}, transformers {transformers.__version__}",
        "",
        f"Reproduce: `HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_distill.py {' '.join(sys.argv[1:])}`",
        "",
        f"Speed measured by the distill job on {on['rows']} test rows, batch size {on['batch_size']}, "
        f"max_length {on['max_length']}, {on['threads']} torch thread(s), tokenizing included; "
        f"distill command {seconds:.0f} s in all.",
        "",
        "| model | parameters | size MB | ms/row | rows/s | accuracy | share of teacher accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("teacher", "student", "baseline"):
        e = comparison.get(name)
        if not e:
            continue
        shown = "student trained on gold labels only" if name == "baseline" else name
        cells = [
            e["params"],
            e["size_mb"],
            e["ms_per_row"],
            e["rows_per_s"],
            e["accuracy"],
            e["quality_kept"],
        ]
        lines.append(f"| {shown} | " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    lines += [
        "",
        f"Student / teacher: {comparison['speedup']:.2f}x rows/s at {comparison['size_ratio']:.1%} of the "
        f"parameters, keeping {comparison['quality_kept']:.1%} of the teacher's accuracy; labels agree with "
        f"the teacher's on {comparison['teacher_agreement']:.1%} of test rows.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fresh-teacher", action="store_true", help="retrain the teacher even if runs/ has it"
    )
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default: the recipe's)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the gold-labels-only student")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown here")
    args = parser.parse_args()
    load = os.getloadavg()
    if args.fresh_teacher or not (TEACHER_MODEL / "config.json").exists():
        print("training the teacher (recipes/distill-sentiment-teacher.yaml)", file=sys.stderr, flush=True)
        llmtune("finetune", str(TEACHER_RECIPE), "--set", "output.overwrite=true")
    with tempfile.TemporaryDirectory() as tmp:
        sets = ["--set", f"baseline={'false' if args.no_baseline else 'true'}"]
        if args.epochs:
            sets += ["--set", f"training.epochs={args.epochs}"]
        seconds = llmtune("distill", str(DISTILL_RECIPE), "--output", f"{tmp}/distill", *sets)
        comparison = json.loads(Path(tmp, "distill", "eval.json").read_text())["comparison"]
    report = render(comparison, seconds, load)
    print(report)
    if args.output:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
