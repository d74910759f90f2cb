"""Benchmark: choosing a checkpoint on a 6-row validation split (issue 26, item 4).

The first-hour case: 60 support tickets (tests/test_first_hour.py's generator), the starter's
10% validation carve (6 rows), early stopping on eval_f1 with patience 3, all-MiniLM-L6-v2 with
LoRA and every other setting left to `auto`; 30 fresh tickets as the test file. Two runs side by
side on the same data: llmtune's default (a validation split under 30 rows chooses nothing: full
length, last step kept) and `training.early_stopping.min_rows: 1` (early stopping on the 6 rows,
best checkpoint kept: what llmtune did before). Each run is `llmtune finetune --json` in a
subprocess, as a user runs it.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_first_hour.py

Prints a Markdown table and writes it to bench/results/first_hour.md.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_first_hour import BILLING, BUG, FEATURE, THINGS, tickets  # noqa: E402

RUNS = {"default (rule: 30 validation rows)": {}, "min_rows: 1 (the old behaviour)": {"min_rows": 1}}


def test_file(path: Path) -> None:
    rng = random.Random(99)
    kinds = [("billing", BILLING), ("bug", BUG), ("feature-request", FEATURE)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["body", "category"])
        for i in range(30):
            writer.writerow([rng.choice(kinds[i % 3][1]).format(x=rng.choice(THINGS)), kinds[i % 3][0]])


def recipe(folder: Path, stopping: dict) -> Path:
    body = {
        "kind": "finetune",
        "model": {"path": "sentence-transformers/all-MiniLM-L6-v2"},
        "labels": ["billing", "bug", "feature-request"],
        "data": {
            "train": "tickets.csv",
            "test": "test.csv",
            "split": {"validation": 0.1, "seed": 42},
            "columns": {"text": "body", "label": "category"},
        },
        "training": {"early_stopping": {"patience": 3, "metric": "eval_f1", **stopping}},
    }
    path = folder / f"r{len(list(folder.glob('r*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def main() -> None:
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tickets(folder / "tickets.csv")
        test_file(folder / "test.csv")
        for name, stopping in RUNS.items():
            started = time.monotonic()
            out = subprocess.run(
                [sys.executable, "-m", "llmtune", "finetune", str(recipe(folder, stopping)), "--json"],
                capture_output=True,
                text=True,
                check=True,
            )
            s = json.loads(out.stdout.strip().splitlines()[-1])
            sel = s["selection"]
            early = f"fired at step {sel['stopped_at']}" if sel["stopped_at"] else sel["early_stopping"]
            rows.append(
                f"| {name} | {sel['validation_rows']} | {early} | {s['steps']}/{s['planned_steps']} | "
                f"{sel['kept']} | {s['test']['accuracy']:.3f} | {time.monotonic() - started:.0f} |"
            )
    load_after = os.getloadavg()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    flags = next(
        (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
    )
    wanted = [f for f in ("avx2", "avx512f", "amx_tile") if f" {f}" in flags]
    text = "\n".join(
        [
            "60 tickets (54 train, 6 validation), 30 test tickets; all-MiniLM-L6-v2 + LoRA, auto epochs "
            "(100 steps), early stopping on eval_f1, patience 3",
            "",
            "| run | validation rows | early stopping | steps | model kept | test accuracy | wall s |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"commit {commit.stdout.strip()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
            f"{os.cpu_count()} cores ({', '.join(wanted) or 'no avx2'}); load {load_before[0]:.1f} before, "
            f"{load_after[0]:.1f} after (a shared machine: wall times are not comparable, accuracies are)",
            "reproduce: HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_first_hour.py",
            "",
        ]
    )
    print(text)
    (ROOT / "bench" / "results" / "first_hour.md").write_text(text)


if __name__ == "__main__":
    main()
