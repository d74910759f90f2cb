"""Measure: the disk a completed run keeps with and without its checkpoints, and what `llmtune
predict` / `llmtune runs` print for it.

Trains recipes/quickstart.yaml (LoRA on all-MiniLM-L6-v2) into a temp folder with
`training.keep_checkpoints: all`, measures checkpoints/ and model/, runs `llmtune runs clean
--yes` on it and records the bytes freed, then runs `llmtune predict` on two sentences and
`llmtune runs`. Writes bench/results/run_disk.md.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_run_disk.py
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def llmtune(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "llmtune", *map(str, args)], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        raise SystemExit(f"llmtune {' '.join(map(str, args))} failed:\n{out.stderr[-3000:]}")
    return out


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    from seed_hf_cache import seed

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seed(work / "hf" / "hub", link=True)
        env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        run = work / "runs" / "quickstart"
        recipe = ROOT / "recipes" / "quickstart.yaml"
        llmtune("finetune", recipe, "--output", run, "--set", "training.keep_checkpoints=all", env=env)
        checkpoints, model, total = size(run / "checkpoints"), size(run / "model"), size(run)
        cleaned = json.loads(llmtune("runs", "clean", work / "runs", "--yes", "--json", env=env).stdout)
        after = size(run)
        texts = ["The battery died after two days.", "Works perfectly, great value."]
        predicted = llmtune("predict", run, *texts, env=env).stdout
        table = llmtune("runs", work / "runs", env=env).stdout.replace(str(work), "TMP")
    load_after = os.getloadavg()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    mb = 1e6
    lines = [
        "# Disk of a completed run: checkpoints/ against model/",
        "",
        f"commit {commit.stdout.strip()}, {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, "
        f"{platform.machine()}, {os.cpu_count()} cores, load {load_before[0]:.1f} before / {load_after[0]:.1f} after",
        f"CPU flags (AVX): {' '.join(f for f in flags.split() if f.startswith('avx'))}",
        "command: HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_run_disk.py "
        "(recipes/quickstart.yaml with training.keep_checkpoints: all, then llmtune runs clean --yes)",
        "",
        "| what | MB |",
        "|---|---|",
        f"| checkpoints/ (kept for --resume) | {checkpoints / mb:.1f} |",
        f"| model/ (the trained adapter + tokenizer) | {model / mb:.1f} |",
        f"| whole run before `runs clean` | {total / mb:.1f} |",
        f"| freed by `runs clean --yes` | {cleaned['freed_bytes'] / mb:.1f} |",
        f"| whole run after | {after / mb:.1f} |",
        "",
        "`llmtune predict TMP/runs/quickstart " + " ".join(json.dumps(t) for t in texts) + "`:",
        "",
        "```",
        predicted.rstrip(),
        "```",
        "",
        "`llmtune runs TMP/runs` after the clean:",
        "",
        "```",
        table.rstrip(),
        "```",
    ]
    out = ROOT / "bench" / "results" / "run_disk.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
