"""Benchmark: `llmtune prompt-eval` (scoring: choices) against lm-evaluation-harness on one task.

The same saved ~20M-parameter scratch llama, the same rows (data/sentiment test reviews), the
same prompt ("Review: ...\\nSentiment:") and the same choices (" negative" / " positive"):
- lm-eval 0.4.x runs a local multiple-choice task (a YAML written here) with `--model hf
  --log_samples`; it lives in its own venv (--lm-eval, default .venv-bench/bin/lm_eval:
  `python3 -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0 lm-eval==0.4.13`);
- llmtune runs a prompt-eval recipe with `scoring: choices`, `choice_normalization: sum`.
Compared row by row: every choice's log-likelihood (lm-eval's logged `resps` against llmtune's
predictions.jsonl `logprob_sum`), the predictions, and accuracy; and the whole-process time of
each command, interleaved, best of --repeat.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_prompt_eval_lmeval.py [--rows 160] [--repeat 2]
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

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "sentiment"
LABELS = ["negative", "positive"]
PROMPT = "Review: {{ review }}\nSentiment:"
TASK = "llmtune_sentiment"


def build_model(folder: Path) -> None:
    """The scratch llama of bench_bulk_infer.py (random weights: only agreement matters here)."""
    import torch

    from llmtune.models.loading import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_bulk_infer import GEN_MODEL

    spec = ScratchModel(**GEN_MODEL)
    corpus = [json.loads(x)["review"] for x in (DATA / "train.jsonl").read_text().splitlines()]
    tok = build_tokenizer(spec, corpus)
    torch.manual_seed(0)
    model = build_scratch_model(spec, tok, head="causal_lm", labels=None).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def write_inputs(work: Path, rows: int) -> None:
    """The rows file, lm-eval's task YAML over it and llmtune's recipe over it."""
    lines = (DATA / "test.jsonl").read_text().splitlines() + (DATA / "train.jsonl").read_text().splitlines()
    (work / "rows.jsonl").write_text("\n".join(lines[:rows]) + "\n")
    task = {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(work / "rows.jsonl")}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": PROMPT,
        "doc_to_choice": LABELS,
        "doc_to_target": "{{ " + repr(LABELS) + ".index(sentiment) }}",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc"}],
    }
    (work / "tasks").mkdir(exist_ok=True)
    (work / "tasks" / f"{TASK}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    recipe = {
        "kind": "prompt-eval",
        "models": {"scratch": {"path": str(work / "model")}},
        "data": {"test": str(work / "rows.jsonl"), "columns": {"text": "review", "label": "sentiment"}},
        "labels": LABELS,
        "prompts": {"zero_shot": {"template": PROMPT.replace("review", "text")}},
        "scoring": "choices",
        "choice_normalization": "sum",
        "metrics": ["accuracy"],
        "output": {"dir": str(work / "runs" / "pe"), "overwrite": True},
    }
    (work / "prompt-eval.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


def run_lm_eval(work: Path, lm_eval: str, batch_size: int, tag: str) -> tuple[float, Path]:
    out = work / f"lm-eval-{tag}"
    cmd = [lm_eval, "--model", "hf", "--model_args", f"pretrained={work / 'model'},dtype=float32"]
    cmd += ["--tasks", TASK, "--include_path", str(work / "tasks"), "--device", "cpu"]
    cmd += ["--batch_size", str(batch_size), "--log_samples", "--output_path", str(out)]
    return timed(cmd, work), out


def run_llmtune(work: Path, python: str, tag: str) -> tuple[float, Path]:
    out = work / f"llmtune-{tag}"
    cmd = [
        str(Path(python).parent / "llmtune"),
        "prompt-eval",
        str(work / "prompt-eval.yaml"),
        "--output",
        str(out),
    ]
    return timed(cmd, work), out


def timed(cmd: list[str], cwd: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def lm_eval_rows(out: Path) -> tuple[dict[str, list[float]], float]:
    """Per-row choice log-likelihoods from the samples file, and the task's acc."""
    samples = next(out.rglob(f"samples_{TASK}_*.jsonl"))
    rows = {}
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        rows[s["doc"]["id"]] = [float(r[0][0]) for r in s["resps"]]  # resps: [[[loglik, is_greedy]], ...]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    return rows, float(results["results"][TASK]["acc,none"])


def llmtune_rows(out: Path) -> tuple[list[dict[str, Any]], float]:
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    return preds, float(results["pairs"][0]["metrics"]["accuracy"])


def compare(lm_out: Path, ll_out: Path) -> dict[str, Any]:
    """Largest log-likelihood difference, same predictions, both accuracies."""
    lm_rows, lm_acc = lm_eval_rows(lm_out)
    preds, ll_acc = llmtune_rows(ll_out)
    diffs, same = [], 0
    for pred in preds:
        sums = [pred["logprob_sum"][label] for label in LABELS]
        theirs = lm_rows[pred["id"]]
        diffs += [abs(a - b) for a, b in zip(sums, theirs)]
        same += LABELS[max(range(len(LABELS)), key=theirs.__getitem__)] == pred["prediction"]
    return {"rows": len(preds), "max_diff": max(diffs), "same": same, "lm_acc": lm_acc, "ll_acc": ll_acc}


def versions(python: str) -> str:
    probe = "import importlib.metadata as m\nfor p in ('torch','transformers','lm_eval'):\n"
    probe += "    try: print(p, m.version(p))\n    except Exception: pass\n"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.split("\n")
    return ", ".join(x for x in out if x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=160, help="first N of test.jsonl + train.jsonl")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="lm-eval's --batch_size")
    parser.add_argument("--lm-eval", default=str(ROOT / ".venv-bench" / "bin" / "lm_eval"))
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_model(work / "model")
        write_inputs(work, args.rows)
        load_before = os.getloadavg()
        lm_times, ll_times = [], []
        for k in range(args.repeat):  # interleaved: A, B, A, B
            lm_s, lm_out = run_lm_eval(work, args.lm_eval, args.batch_size, str(k))
            ll_s, ll_out = run_llmtune(work, sys.executable, str(k))
            lm_times.append(lm_s)
            ll_times.append(ll_s)
            print(f"round {k}: lm-eval {lm_s:.1f}s, llmtune {ll_s:.1f}s", file=sys.stderr, flush=True)
        agreement = compare(lm_out, ll_out)
        report = render(args, agreement, min(lm_times), min(ll_times), load_before, Path(args.lm_eval))
    print(report)
    if args.output:
        args.output.write_text(report)


def render(args: Any, a: dict[str, Any], lm_s: float, ll_s: float, load: tuple, lm_eval: Path) -> str:
    cpu = next(
        x.split(":", 1)[1].strip()
        for x in Path("/proc/cpuinfo").read_text().splitlines()
        if "model name" in x
    )
    loads = lambda v: ", ".join(f"{x:.2f}" for x in v)  # noqa: E731
    lines = [
        f"Machine: {cpu}, {os.cpu_count()} cores, load average {loads(load)} at the start, "
        f"{loads(os.getloadavg())} at the end (1, 5, 15 min)",
        f"llmtune: {versions(sys.executable)}; lm-eval venv: {versions(str(lm_eval.parent / 'python'))}",
        "",
        f"Reproduce: `HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_prompt_eval_lmeval.py {' '.join(sys.argv[1:])}`",
        "",
        f"{a['rows']} rows, 2 choices, scratch llama 20M, zero-shot, lm-eval `--batch_size {args.batch_size}`, "
        f"llmtune `batch_size: auto`; whole command, best of {args.repeat} interleaved:",
        "",
        "| measure | lm-evaluation-harness | llmtune prompt-eval | agreement |",
        "|---|---|---|---|",
        f"| accuracy | {a['lm_acc']:.4f} | {a['ll_acc']:.4f} | {'equal' if abs(a['lm_acc'] - a['ll_acc']) < 1e-12 else 'DIFFERENT'} |",
        f"| per-row log-likelihoods ({2 * a['rows']}) | - | - | largest difference {a['max_diff']:.2e} "
        f"({'within' if a['max_diff'] <= 1e-5 else 'NOT within'} 1e-5) |",
        f"| predictions | - | - | {a['same']}/{a['rows']} the same |",
        f"| whole command, s | {lm_s:.1f} | {ll_s:.1f} | llmtune / lm-eval = {ll_s / lm_s:.2f}x |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
