"""Re-run the shipped recipes whose numbers the docs quote and write each result, with where it
came from, into bench/results/<name>.md (`make results`).

Each result runs its recipe once per seed (`--set seed=S`, its own run directory under
runs/results/), reads the run's eval.json and writes a table: one row per seed and, with two or
more seeds, the mean, standard deviation and range. The file starts with the commit, date,
machine (CPU, cores, ISA flags), load before and after, and the exact command. Results too slow
to re-run in one sitting are listed by `--list` with the command that measures them.

    python tools/results.py                        # every result below, with its default seeds
    python tools/results.py regression --seeds 42 43 44
    python tools/results.py --list
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from provenance import commit, header, load, now, this_command  # noqa: E402


@dataclass(frozen=True)
class Result:
    """One published figure set: which recipe measures it and which eval.json keys it quotes."""

    verb: str
    recipe: str
    keys: tuple[str, ...]
    seeds: tuple[int, ...]
    quoted_in: str


RESULTS = {
    "quickstart": Result(
        "finetune",
        "recipes/quickstart.yaml",
        ("accuracy", "f1"),
        (42, 43, 44),
        "README.md (quickstart output)",
    ),
    "regression": Result(
        "finetune",
        "recipes/finetune-regression.yaml",
        ("mae", "rmse", "r2", "pearson", "spearman"),
        (42, 43, 44),
        "README.md (regression table)",
    ),
    "reward": Result(
        "rlhf",
        "recipes/rlhf-reward.yaml",
        ("pairwise_accuracy", "tie_gap", "pair_gap"),
        (42, 43, 44),
        "README.md (RLHF table, reward row)",
    ),
}
# Quoted figures this script does not re-run (each takes 10+ minutes on 2 shared cores, or needs
# another venv): the command that measures each.
NOT_RERUN = {
    "distill (95.6% / 3.05x)": "python bench/bench_distill.py --output bench/results/distill.md",
    "rlhf chain (GRPO, DPO, KTO)": "for s in sft collect reward policy dpo kto; do llmtune ...; done "
    "(README, RLHF section: rlhf-sft.yaml, rlhf-collect.yaml, rlhf-reward.yaml, rlhf-policy.yaml, "
    "rlhf-dpo.yaml, rlhf-kto.yaml in that order)",
    "replay": "llmtune finetune recipes/finetune-replay-general.yaml, then finetune-replay-off.yaml "
    "and finetune-replay-on.yaml",
    "sequential": "llmtune finetune recipes/finetune-sequential.yaml",
    "adapter methods": "llmtune finetune recipes/finetune-{lora,dora,ia3,adapter,prefix,prompt}.yaml",
    "prompt-eval table": "llmtune prompt-eval recipes/prompt-eval-sentiment.yaml",
    "fine-tuning bench": "python bench/bench_finetune.py --threads 2 (writes bench/results/finetune.md)",
    "bulk-infer bench": "python bench/bench_bulk_infer.py (writes bench/results/bulk_infer.md)",
    "int8, engines, hf engine, lm-eval": "make bench",
}


def metric(evaluation: dict, key: str) -> tuple[float | None, float | None]:
    """(before, after) of `key`: a headline key at the top of eval.json (reward: `key` and
    `key_before`) or a test metric (`metrics` and `before_training`)."""
    if key in evaluation:
        return evaluation.get(f"{key}_before"), evaluation[key]
    before = (evaluation.get("before_training") or {}).get(key)
    return before, (evaluation.get("metrics") or {}).get(key)


@dataclass(frozen=True)
class Run:
    """One training run of a result: its eval.json and where and how it ran."""

    seed: int
    evaluation: dict
    seconds: float
    command: str
    commit: str
    load_before: str
    load_after: str


def run_one(name: str, result: Result, seed: int, reuse: bool) -> Run:
    """Train once (or, with `reuse`, read a run this script finished before) and record the run
    in its directory's measured.json."""
    out = ROOT / "runs" / "results" / f"{name}-seed{seed}"
    if reuse and (out / "measured.json").exists() and (out / "eval.json").exists():
        print(f"results: {name}, seed {seed}: reusing {out.relative_to(ROOT)}", file=sys.stderr)
        evaluation = json.loads((out / "eval.json").read_text())
        return Run(seed, evaluation, **json.loads((out / "measured.json").read_text()))
    command = [  # output.dir is relative to the recipe's folder, as in the recipes
        *("python", "-m", "llmtune", result.verb, result.recipe),
        *("--set", f"seed={seed}", "--set", f"output.dir=../runs/results/{out.name}"),
        *("--set", "output.overwrite=true"),
    ]
    print(f"results: {name}, seed {seed}: {shlex.join(command)}", file=sys.stderr, flush=True)
    at, before, start = commit(), load(), time.monotonic()
    subprocess.run(
        [sys.executable, *command[1:4], str(ROOT / result.recipe), *command[5:]], cwd=ROOT, check=True
    )
    seconds = time.monotonic() - start
    measured = {
        "seconds": round(seconds, 1),
        "command": shlex.join(command),
        "commit": at,
        "load_before": before,
        "load_after": load(),
    }
    (out / "measured.json").write_text(json.dumps(measured, indent=1) + "\n")
    return Run(seed, json.loads((out / "eval.json").read_text()), **measured)


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def table(result: Result, runs: list[Run]) -> list[str]:
    """One row per seed (before -> after), and the spread over seeds."""
    lines = [
        "| seed | commit | wall s | load before; after | "
        + " | ".join(f"{k} before | {k} after" for k in result.keys)
        + " |",
        "|---|---|---|---|" + "---|---|" * len(result.keys),
    ]
    for run in runs:
        cells = [fmt(v) for k in result.keys for v in metric(run.evaluation, k)]
        where = f"| {run.seed} | {run.commit} | {run.seconds:.0f} | {run.load_before}; {run.load_after} | "
        lines.append(where + " | ".join(cells) + " |")
    if len(runs) < 2:
        return [*lines, "", "A single run: no spread measured."]
    lines += ["", f"Over {len(runs)} seeds (after training): mean, standard deviation, min - max.", ""]
    lines += ["| metric | mean | sd | min | max |", "|---|---|---|---|---|"]
    for key in result.keys:
        values = [v for run in runs if (v := metric(run.evaluation, key)[1]) is not None]
        if values:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            lines.append(
                f"| {key} | {fmt(statistics.mean(values))} | {fmt(sd)} | {fmt(min(values))} | {fmt(max(values))} |"
            )
    return lines


def measure(name: str, seeds: tuple[int, ...], folder: Path, reuse: bool = False) -> Path:
    """Run `name` once per seed and write folder/<name>.md."""
    result, started, before = RESULTS[name], now(), load()
    runs = [run_one(name, result, seed, reuse) for seed in seeds]
    commands = [run.command for run in runs]
    text = header(f"{name}: {result.recipe}", this_command(), before, started)
    text += f"\nQuoted in {result.quoted_in}. Test split metrics from each run's eval.json.\n\n"
    text += "\n".join(table(result, runs)) + "\n\nRuns:\n\n" + "".join(f"- `{c}`\n" for c in commands)
    path = folder / f"{name}.md"
    path.write_text(text, encoding="utf-8")
    print(f"results: wrote {path}", file=sys.stderr)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"results to measure: {', '.join(RESULTS)} (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: each result's own)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read a seed's run when this script finished it before (runs/results/)",
    )
    parser.add_argument("--list", action="store_true", help="list every result and those not re-run here")
    args = parser.parse_args()
    if args.list:
        for name, r in RESULTS.items():
            print(f"{name}: {r.verb} {r.recipe}, seeds {list(r.seeds)} -> bench/results/{name}.md")
        for name, command in NOT_RERUN.items():
            print(f"not re-run here: {name}: {command}")
        return
    unknown = [n for n in args.names if n not in RESULTS]
    if unknown:
        parser.error(f"no result named {unknown[0]!r}; choose from {', '.join(RESULTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or list(RESULTS):
        measure(name, tuple(args.seeds or RESULTS[name].seeds), args.out, args.reuse)


if __name__ == "__main__":
    main()
