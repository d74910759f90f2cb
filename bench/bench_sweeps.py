"""Benchmark: Optuna TPE vs random search on the same budget (BENCHMARKS.md "Sweeps").

Runs `llmtune finetune bench/sweeps/{random,tpe}.yaml` for each sampler seed (8 trials each, the
same search space, model and data) and writes, per seed, each sampler's best validation loss and
which trial found it, from the sweeps' own summaries, into bench/results/sweeps.md.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_sweeps.py [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from provenance import ROOT, header, load, now, this_command

SAMPLERS = ("random", "tpe")


def best_of(sampler: str, seed: int, out: Path) -> dict:
    """The sweep's summary (its last stdout line under --json)."""
    recipe = ROOT / "bench" / "sweeps" / f"{sampler}.yaml"
    command = [sys.executable, "-m", "llmtune", "finetune", str(recipe), "--json"]
    command += ["--set", f"sweep.seed={seed}", "--output", str(out / f"{sampler}-{seed}")]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{sampler} seed {seed} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "sweeps.md")
    args = parser.parse_args()
    started, load_before = now(), load()
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmtune-sweeps-") as scratch:
        for seed in (int(s) for s in args.seeds.split(",")):
            found = {s: best_of(s, seed, Path(scratch)) for s in SAMPLERS}
            cells = []
            for sampler in SAMPLERS:
                best = found[sampler]["best"]
                cells.append(f"{best['eval_loss']:.4f}")
            tpe_trial = found["tpe"]["best"]["trial"]
            rows.append(f"| {seed} | {' | '.join(cells)} | {tpe_trial} |")
    text = header("Sweeps: Optuna TPE vs random search, 8 trials each", this_command(), load_before, started)
    text += "\n".join(
        [
            "- bench/sweeps/{random,tpe}.yaml: learning rate, warmup ratio and weight decay; a 2-layer scratch",
            "  llama (hidden 64), 60 steps each, ranked on validation loss; TPE with pruning off",
            "",
            "| sampler seed | random: best validation loss | TPE: best validation loss | TPE's best trial (0-based) |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )
    args.output.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
