"""Benchmark: prompt-eval's chrF and BLEU on a generation eval against sacrebleu run by hand.

Offline, so the models are tiny: a scratch llama fine-tuned (`llmtune finetune`, causal_lm, full)
on the 36 rows of data/translation until it has partly memorised them, against the same
architecture untrained. Memorised rows say nothing about translation quality: the point is
outputs that vary between prompts and models, so that the comparison of the metrics is not a
comparison of zeros. Steps:
1. `llmtune finetune` the tiny model on data/translation (prompt "SOURCE\\nLANGUAGE:");
2. `llmtune prompt-eval` (the CLI) with two models x two prompts, slices, assertions;
3. for every pair, the `hypothesis` and `gold` fields of predictions.jsonl are written to text
   files and scored by the `sacrebleu` command-line tool (`sacrebleu REF -i HYP -m bleu chrf -w 4`);
   its scores are compared with results.json's chrf and bleu (x 100), and its signatures with
   results.json's.
Writes bench/results/prompt_eval_generation.md (with the run's table, intervals and paired tests).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_prompt_eval_generation.py [--steps 200]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "translation" / "test.jsonl"
RESULTS = ROOT / "bench" / "results" / "prompt_eval_generation.md"
ARCH = {"architecture": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4}


def llmtune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`llmtune ARGS` as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "llmtune", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def fine_tune(work: Path, steps: int) -> Path:
    """A tiny scratch llama trained on the eval rows themselves (prompt -> reference)."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    train = [
        {"prompt": f"{r['source']}\n{r['language_name']}:", "completion": " " + r["reference"]} for r in rows
    ]
    (work / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train))
    recipe = {
        "kind": "finetune",
        "task": "causal_lm",
        "model": {"scratch": ARCH},
        "method": {"type": "full"},
        "data": {"train": "train.jsonl", "max_length": 128},
        "training": {"max_steps": steps, "batch_size": 12, "learning_rate": 3.0e-3, "logging_steps": 50},
        "output": {"dir": "tuned", "overwrite": True},
    }
    (work / "ft.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    done = llmtune("finetune", "ft.yaml", cwd=work)
    if done.returncode != 0:
        sys.exit(f"finetune failed:\n{done.stderr[-3000:]}")
    return work / "tuned" / "model"


def eval_recipe(work: Path, model: Path) -> Path:
    recipe = {
        "kind": "prompt-eval",
        "name": "translation-bench",
        "models": {"untrained": {"scratch": ARCH}, "memorised": {"path": str(model)}},
        "data": {"test": str(DATA), "columns": {"text": "source", "label": "reference"}},
        "task": "free_text",
        "scoring": "generate",
        "max_new_tokens": 40,
        "answer_pattern": "^([^\\n]*)",  # the first line: the model goes on after its answer
        "prompts": {
            "trained_format": {"template": "{{ text }}\n{{ language_name }}:"},
            "other_format": {"template": "{{ language_name }}: {{ text }} =>"},
        },
        "slices": ["language"],
        "assertions": [{"type": "not_contains", "value": "English", "name": "no_english"}],
        "output": {"dir": "eval", "overwrite": True},
    }
    path = work / "eval.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
    return path


def by_hand(run: Path) -> dict[str, dict[str, Any]]:
    """sacrebleu's command-line tool on each pair's hypotheses and references."""
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    out = {}
    for key in dict.fromkeys((r["model"], r["prompt"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["prompt"]) == key]
        hyp, ref = run / f"{key[0]}.{key[1]}.hyp", run / f"{key[0]}.{key[1]}.ref"
        hyp.write_text("".join(r["hypothesis"].replace("\n", " ") + "\n" for r in mine))
        ref.write_text("".join(r["gold"] + "\n" for r in mine))
        cmd = [
            sys.executable,
            "-m",
            "sacrebleu",
            str(ref),
            "-i",
            str(hyp),
            "-m",
            "bleu",
            "chrf",
            "-w",
            "4",
            "-f",
            "json",
        ]
        scores = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        out[f"{key[0]} x {key[1]}"] = {s["name"]: s for s in scores}
    return out


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next(x.split(":", 1)[1].strip() for x in info if "model name" in x)
    flags = next(x.split(":", 1)[1].split() for x in info if x.startswith("flags"))
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{cpu}, {os.cpu_count()} cores, CPU flags: {' '.join(shown) or 'none of avx2/avx512'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps of the memorised model")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = fine_tune(work, args.steps)
        done = llmtune("prompt-eval", str(eval_recipe(work, model)), "--json", cwd=work)
        if done.returncode != 0:
            sys.exit(f"prompt-eval failed:\n{done.stderr[-3000:]}")
        results = json.loads((work / "eval" / "results.json").read_text())
        report = (work / "eval" / "report.md").read_text()
        hand = by_hand(work / "eval")
    text = render(args, results, report, hand, load_before, time.monotonic() - started)
    args.output.write_text(text)
    print(text)


def render(args: Any, results: dict, report: str, hand: dict, load: tuple, seconds: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    loads = lambda v: ", ".join(f"{x:.2f}" for x in v)  # noqa: E731
    rows, worst = [], 0.0
    for pair in results["pairs"]:
        name = f"{pair['model']} x {pair['prompt']}"
        ours = {m: 100 * pair["metrics"][m] for m in ("chrf", "bleu")}
        theirs = {"chrf": hand[name]["chrF2"]["score"], "bleu": hand[name]["BLEU"]["score"]}
        # the CLI prints scores rounded to `-w 4` decimals
        diff = max(abs(round(ours[m], 4) - theirs[m]) for m in ours)
        worst = max(worst, diff)
        rows.append(
            f"| {name} | {ours['chrf']:.4f} | {theirs['chrf']:.4f} | {ours['bleu']:.4f} | {theirs['bleu']:.4f} "
            f"| {'equal' if diff < 1e-9 else f'DIFFERENT by {diff:.4f}'} |"
        )
    first = next(iter(hand.values()))
    signature_rows = [
        f"- {m}: llmtune (results.json) `{results['signatures'][m]}`, sacrebleu CLI `{first[cli]['signature']}`"
        for m, cli in (("chrf", "chrF2"), ("bleu", "BLEU"))
    ]
    section = report.split("## chrf (rows", 1)[1].split("## All pairs", 1)[0]
    section = "\n".join(line for line in section.splitlines() if not line.startswith("!["))  # no chart here
    lines = [
        "# prompt-eval generation metrics against sacrebleu by hand",
        "",
        f"- commit {commit.stdout.strip()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- load average {loads(load)} at the start, {loads(os.getloadavg())} at the end (1, 5, 15 min); "
        f"whole script {seconds:.0f} s",
        "- command: `"
        + " ".join(["HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_prompt_eval_generation.py", *sys.argv[1:]])
        + "`",
        "",
        "Models: a tiny scratch llama (64 wide, 2 layers) fine-tuned for "
        f"{args.steps} steps on the 36 rows of data/translation (it has seen these rows: a memorisation "
        "demo, not a translation result), and the same architecture untrained. Every pair's hypotheses "
        "(`hypothesis` in predictions.jsonl) and references (`gold`) are written to text files and scored "
        "by the `sacrebleu` command-line tool (`sacrebleu REF -i HYP -m bleu chrf -w 4`: 4 decimals).",
        "",
        "| pair | llmtune chrF x 100 | sacrebleu CLI chrF | llmtune BLEU x 100 | sacrebleu CLI BLEU | "
        "agreement (llmtune rounded to 4 decimals) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Signatures:",
        "",
        *signature_rows,
        "",
        f"Largest difference: {worst:.2g}.",
        "",
        "## The run's report (report.md, as written by `llmtune prompt-eval`)",
        "",
        "## chrf (rows" + section.rstrip(),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
