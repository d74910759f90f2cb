"""Benchmark: which prompt-eval differences are larger than the noise, on a real classification run.

Runs `llmtune prompt-eval recipes/prompt-eval-sentiment.yaml` (all-MiniLM-L6-v2 with a new, untrained
head against the quickstart's LoRA adapter, zero-, one- and few-shot, on the same 160 test
reviews; run `llmtune finetune recipes/quickstart.yaml` first) and writes its table with 95%
intervals and its paired tests (McNemar's exact test on accuracy, paired bootstrap on F1) to
bench/results/prompt_eval_significance.md.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_prompt_eval_significance.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "prompt-eval-sentiment.yaml"
RUN = ROOT / "runs" / "sentiment-prompts"
RESULTS = ROOT / "bench" / "results" / "prompt_eval_significance.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (ROOT / "runs" / "quickstart" / "model").exists():
        sys.exit("run `llmtune finetune recipes/quickstart.yaml` first (the tuned model is its adapter)")
    load = os.getloadavg()
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "llmtune", "prompt-eval", str(RECIPE), "--json"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"prompt-eval failed:\n{done.stderr[-3000:]}")
    seconds = time.monotonic() - started
    report = (RUN / "report.md").read_text()
    manifest = json.loads((RUN / "manifest.json").read_text())
    tables = report.split("## accuracy (rows", 1)[1].split("## All pairs", 1)[0]
    tables = "\n".join(line for line in tables.splitlines() if not line.startswith("!["))  # no chart here
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next(x.split(":", 1)[1].strip() for x in info if "model name" in x)
    flags = next(x.split(":", 1)[1].split() for x in info if x.startswith("flags"))
    loads = lambda v: ", ".join(f"{x:.2f}" for x in v)  # noqa: E731
    lines = [
        "# prompt-eval: differences larger than the noise (sentiment, 160 test reviews)",
        "",
        f"- commit {manifest['git_commit'][:7]}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {cpu}, {os.cpu_count()} cores, CPU flags: "
        + " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags)
        + f"; llmtune ran on {manifest['device']}",
        f"- load average {loads(load)} at the start, {loads(os.getloadavg())} at the end (1, 5, 15 min); "
        f"the run took {seconds:.0f} s",
        "- command: `HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_prompt_eval_significance.py` "
        "(runs `llmtune prompt-eval recipes/prompt-eval-sentiment.yaml`)",
        "",
        "`base`: all-MiniLM-L6-v2 with a new, untrained classification head (chance level); `tuned`: the "
        "same with the quickstart's LoRA adapter. Both read the prompt's text with their classification head.",
        "",
        "## accuracy (rows" + tables.rstrip(),
        "",
    ]
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
