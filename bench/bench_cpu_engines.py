"""Benchmark: CPU classification engines, whole process, side by side.

The quickstart model (all-MiniLM-L6-v2 + LoRA, fine-tuned on data/sentiment by `llmtune finetune
recipes/quickstart.yaml`) labels 720 mixed-length reviews (data/sentiment test + inbox + train +
the first 60 of transfer). Each runner is one `python -m llmtune bulk-infer` process (torch or
ONNX Runtime import, model load, every row, the output written), timed from start to exit:

- engine hf (float32 torch, batched);
- engine onnx float32 and int8 (ONNX Runtime; the export is made once, untimed, into the cache
  a cron job would reuse; its one-off cost is reported apart);
- a per-row torch loop (one process: load_model, then one forward pass per review).

Runners take turns, round after round; each keeps its best round (the machine is shared: the best
round is the least disturbed). Every process runs `--threads` threads (LLMTUNE_THREADS /
OMP_NUM_THREADS). Also, in one process: the two int8 paths (torch dynamic quantisation, the old
`quantization: int8`, against ONNX Runtime's dynamic int8), engine time only, interleaved, and
their labels against float32 on the 160-review test split.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_cpu_engines.py [--rounds 2] [--model DIR]

Writes bench/results/cpu_engines.md and bench/results/int8_paths.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "sentiment"
LOOP = """
import json, sys, torch
from llmtune.models.loading import load_model
from llmtune.recipes import load_recipe
recipe = load_recipe(sys.argv[1], None)
loaded = load_model(recipe.model, recipe, head="classification", labels=recipe.labels)
model, tok = loaded.model.merge_and_unload() if hasattr(loaded.model, "merge_and_unload") else loaded.model, loaded.tokenizer
rows = [json.loads(line) for line in open(sys.argv[2])]
with open(sys.argv[3], "w") as out, torch.inference_mode():
    for row in rows:
        probs = torch.softmax(model(**tok(row["review"], truncation=True, max_length=128, return_tensors="pt")).logits[0], -1)
        out.write(json.dumps({"id": row["id"], "p": probs.tolist()}) + "\\n")
"""


def reviews() -> list[dict[str, Any]]:
    """720 mixed-length reviews with ids; the first 160 are the test split."""
    parts = [("test", None), ("inbox", None), ("train", None), ("transfer", 60)]
    rows = []
    for name, limit in parts:
        lines = (DATA / f"{name}.jsonl").read_text().splitlines()[:limit]
        rows += [{"id": f"{name}-{i}", "review": json.loads(x)["review"]} for i, x in enumerate(lines)]
    return rows


def machine() -> str:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    model = next(
        (
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if x.startswith("model name")
        ),
        "?",
    )
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model}; {os.cpu_count()} cores; ISA: {', '.join(isa) or 'none of avx2/avx512/vnni'}"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "llmtune"], cwd=ROOT, capture_output=True, text=True
    )
    return out.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")


def recipe(work: Path, model: Path, engine: str, quantization: str, threads: int) -> Path:
    body = {
        "kind": "bulk-infer",
        "model": {"path": str(model), "quantization": quantization, "threads": threads},
        "input": {"path": str(work / "reviews.jsonl"), "id_column": "id"},
        "template": "{{ review }}",
        "task": "classify",
        "max_length": 128,
        "engine": engine,
        "output": {"path": str(work / "out" / f"{engine}-{quantization}.jsonl")},
    }
    path = work / f"{engine}-{quantization}.yaml"  # JSON is YAML
    path.write_text(json.dumps(body))
    return path


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def labels_of(path: Path) -> dict[str, str]:
    return {r["id"]: r["label"] for r in map(json.loads, path.read_text().splitlines())}


def int8_paths(model: Path, rows: list[dict[str, Any]], rounds: int, threads: int) -> list[list[Any]]:
    """Engine time of torch int8 (engine hf) vs ONNX Runtime int8 (engine onnx), in this process."""
    import torch

    from llmtune.inference import registry
    from llmtune.jobs.bulk_infer.model import engine_request, model_info
    from llmtune.recipes import load_recipe

    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp())
    (work / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    engines = {}
    for name, engine, quantization in (
        ("float32 (torch)", "hf", "none"),
        ("int8 torch dynamic", "hf", "int8"),
        ("int8 ONNX Runtime dynamic", "onnx", "int8"),
    ):
        r = load_recipe(recipe(work, model, engine, quantization, threads), None)
        info = model_info(r)
        r = r.model_copy(update={"labels": info.head_labels})
        engines[name] = (registry.open_engine(engine, engine_request(r, info)), r.labels)
    texts = [r["review"] for r in rows]
    best: dict[str, float] = {}
    out: dict[str, list[str]] = {}
    for _ in range(rounds):
        for name, (engine, labels) in engines.items():
            started = time.perf_counter()
            probs = engine.classify(texts, labels)
            best[name] = min(best.get(name, 1e9), time.perf_counter() - started)
            out[name] = [max(p, key=p.get) for p in probs]
    reference = out["float32 (torch)"][:160]
    table = []
    for name in engines:
        agree = sum(a == b for a, b in zip(out[name][:160], reference)) / 160
        table.append(
            [
                name,
                f"{best[name]:.2f}",
                f"{len(texts) / best[name]:.1f}",
                f"{best['float32 (torch)'] / best[name]:.2f}x",
                f"{agree:.1%}",
            ]
        )
    shutil.rmtree(work, ignore_errors=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "quickstart" / "model")
    args = parser.parse_args()
    if not (args.model / "config.json").exists():
        sys.exit(
            f"no model at {args.model}: run `llmtune finetune recipes/quickstart.yaml` first (or --model DIR)"
        )
    load_before = os.getloadavg()
    rows = reviews()
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-engines-"))
    (work / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {
        **os.environ,
        "LLMTUNE_THREADS": str(args.threads),
        "OMP_NUM_THREADS": str(args.threads),
        "LLMTUNE_ONNX_CACHE": str(work / "onnx-cache"),
        "PYTHONPATH": str(ROOT),
    }
    llmtune = [sys.executable, "-m", "llmtune", "bulk-infer"]
    runners = {
        "engine hf, float32 (torch, batched)": ("hf", "none"),
        "engine onnx, float32": ("onnx", "none"),
        "engine onnx, int8": ("onnx", "int8"),
    }
    paths = {name: recipe(work, args.model, *spec, args.threads) for name, spec in runners.items()}
    export = {}
    for name in (
        "engine onnx, float32",
        "engine onnx, int8",
    ):  # the one-off export and quantisation, untimed below
        export[name] = timed([*llmtune, str(paths[name]), "--limit", "1"], env)
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, path in paths.items():
            shutil.rmtree(work / "out", ignore_errors=True)
            best[name] = min(best.get(name, 1e9), timed([*llmtune, str(path)], env))
            shutil.copy(
                work / "out" / f"{runners[name][0]}-{runners[name][1]}.jsonl",
                work / f"{runners[name][0]}-{runners[name][1]}.result.jsonl",
            )
        loop = "per-row torch loop (batch 1)"
        best[loop] = min(
            best.get(loop, 1e9),
            timed(
                [
                    sys.executable,
                    "-c",
                    LOOP,
                    str(paths["engine hf, float32 (torch, batched)"]),
                    str(work / "reviews.jsonl"),
                    str(work / "loop.jsonl"),
                ],
                env,
            ),
        )
    reference = labels_of(work / "hf-none.result.jsonl")
    test_ids = [r["id"] for r in rows[:160]]
    table = []
    loop_s = best["per-row torch loop (batch 1)"]
    hf_s = best["engine hf, float32 (torch, batched)"]
    for name, seconds in best.items():
        spec = runners.get(name)
        agree = "-"
        if spec:
            got = labels_of(work / f"{spec[0]}-{spec[1]}.result.jsonl")
            agree = f"{sum(got[i] == reference[i] for i in test_ids) / len(test_ids):.1%}"
        table.append(
            [
                name,
                f"{seconds:.1f}",
                f"{len(rows) / seconds:.1f}",
                f"{hf_s / seconds:.2f}x",
                f"{loop_s / seconds:.2f}x",
                agree,
            ]
        )
    os.environ["LLMTUNE_ONNX_CACHE"] = env["LLMTUNE_ONNX_CACHE"]  # the export made above
    int8 = int8_paths(args.model, rows, args.rounds + 1, args.threads)
    load_after = os.getloadavg()
    header = [
        f"- commit: {commit()}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {machine()}; Python {platform.python_version()}",
        f"- load average (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in load_before)} before, {', '.join(f'{x:.1f}' for x in load_after)} after",
        f"- model: {args.model} (the quickstart: all-MiniLM-L6-v2 + LoRA on data/sentiment); {len(rows)} reviews; {args.threads} thread(s) per process; best of {args.rounds} interleaved rounds",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
    ]
    lines = ["# CPU classification engines, whole process", "", *header, ""]
    lines += [
        "| runner | seconds (whole process) | rows/s | vs engine hf | vs per-row loop | labels = hf fp32 (160 test) |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    lines += [
        "",
        "One-off ONNX export (+ int8 quantisation) before the first run, then cached by model fingerprint:",
    ]
    lines += [
        f"- {name}: {seconds:.1f} s whole process, export included (1 row)"
        for name, seconds in export.items()
    ]
    (ROOT / "bench" / "results" / "cpu_engines.md").write_text("\n".join(lines) + "\n")
    lines = ["# int8 paths: torch dynamic quantisation vs ONNX Runtime dynamic int8", "", *header]
    lines += ["- engine time only (model loaded), same process, interleaved; best round", ""]
    lines += [
        "| path | seconds (720 rows) | rows/s | vs float32 torch | labels = float32 (160 test) |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in int8]
    (ROOT / "bench" / "results" / "int8_paths.md").write_text("\n".join(lines) + "\n")
    print((ROOT / "bench" / "results" / "cpu_engines.md").read_text())
    print((ROOT / "bench" / "results" / "int8_paths.md").read_text())
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
