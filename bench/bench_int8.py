"""Benchmark: classification on the CPU in float32 and with `model.quantization: int8`.

One process, one model, the same rows, side by side: a per-row float32 forward loop (batch 1),
the batched engine bulk-infer and prompt-eval use (float32, then int8), and a per-row int8 loop;
the batched float32 run also with 2 torch threads. The runners take turns, round after round,
and each keeps its best round (the machine may be shared: the best round is the least
disturbed). Times exclude loading and include tokenizing. Both models come from llmtune's own
`load_model` (int8: `torch.ao.quantization.quantize_dynamic`, the head kept in float32).

The model: the sentiment classifier `llmtune distill` trains as its teacher
(runs/distill-sentiment-teacher/model, all-MiniLM-L6-v2 fine-tuned on data/sentiment) when it is
there; else all-MiniLM-L6-v2 under a new, untrained 2-label head, where agreement still compares
int8 with float32 on the same weights but its labels mean nothing. Rows: data/sentiment
test.jsonl + inbox.jsonl.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_int8.py [--rounds 3] [--model DIR]

Prints a Markdown table and writes it to bench/results/int8.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
ROWS = [ROOT / "data" / "sentiment" / f for f in ("test.jsonl", "inbox.jsonl")]
TEACHER = ROOT / "runs" / "distill-sentiment-teacher" / "model"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LABELS = ["negative", "positive"]
MAX_LENGTH = 128


def read_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for path in ROWS for line in path.read_text().splitlines() if line.strip()]


def model_folder(requested: Path | None, work: Path) -> tuple[Path, str]:
    """The classifier to measure and how to describe it."""
    if requested is not None:
        return requested, str(requested)
    if (TEACHER / "config.json").exists():
        return TEACHER, "all-MiniLM-L6-v2 fine-tuned on data/sentiment (distill's teacher)"
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmtune.models.loading import resolve_model_path
    from llmtune.recipes.common import ModelRef, RecipeBase

    base = resolve_model_path(ModelRef(path=MINILM), RecipeBase(kind="bench"), "model")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={x: i for i, x in enumerate(LABELS)}
    )
    model.save_pretrained(work / "minilm-cls")
    AutoTokenizer.from_pretrained(base).save_pretrained(work / "minilm-cls")
    return work / "minilm-cls", "all-MiniLM-L6-v2 + an untrained 2-label head (labels mean nothing)"


def load(folder: Path, quantization: str) -> Any:
    from llmtune.models.loading import load_model
    from llmtune.recipes.common import ModelRef, RecipeBase

    ref = ModelRef(path=str(folder.resolve()), device="cpu", quantization=quantization, threads=1)
    return load_model(ref, RecipeBase(kind="bench"), head="classification")


def per_row(loaded: Any, texts: list[str]) -> list[list[float]]:
    """The loop people write first: one text at a time, batch 1."""
    model, tok, out = loaded.model.eval(), loaded.tokenizer, []
    with torch.inference_mode():
        for text in texts:
            enc = tok(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            out.append(model(**enc).logits.softmax(-1)[0].tolist())
    return out


def engine_run(loaded: Any, texts: list[str]) -> list[list[float]]:
    """llmtune's engine as bulk-infer (task: classify) runs it, at bulk-infer's default batching."""
    from llmtune.inference.engine import Engine

    engine = Engine(loaded, max_length=MAX_LENGTH)
    names = engine.head_labels()
    return [[p[n] for n in names] for p in engine.classify(texts, names)]


def with_threads(n: int, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run


def measure(runners: dict[str, Callable[[], Any]], rounds: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Best seconds of each runner over `rounds` rounds, the runners taking turns in each."""
    best = dict.fromkeys(runners, float("inf"))
    outputs: dict[str, Any] = {}
    for _ in range(rounds):
        for name, fn in runners.items():
            start = time.perf_counter()
            outputs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
            print(f"  {name}: {best[name]:.2f} s (best so far)", file=sys.stderr, flush=True)
    return best, outputs


def labels_of(probs: list[list[float]]) -> list[int]:
    return [max(range(len(p)), key=p.__getitem__) for p in probs]


def agreement(a: list[list[float]], b: list[list[float]]) -> str:
    same = sum(x == y for x, y in zip(labels_of(a), labels_of(b)))
    return f"{same}/{len(a)} ({100 * same / len(a):.1f}%)"


def accuracy(probs: list[list[float]], gold: list[str | None], names: list[str]) -> str:
    pairs = [(names[i], g) for i, g in zip(labels_of(probs), gold) if g is not None]
    return f"{sum(p == g for p, g in pairs) / len(pairs):.3f}" if pairs else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every runner; best of N")
    parser.add_argument("--model", type=Path, default=None, help="a classifier folder to measure instead")
    args = parser.parse_args()
    from llmtune.models.loading import quiet_libraries

    quiet_libraries(debug=False)
    torch.set_num_threads(1)
    rows = read_rows()
    texts = [r["review"] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        folder, described = model_folder(args.model, Path(tmp))
        fp32, int8 = load(folder, "none"), load(folder, "int8")
    names = [str(fp32.model.config.id2label[i]) for i in range(fp32.model.config.num_labels)]
    gold = [r.get("sentiment") if r.get("sentiment") in names else None for r in rows]
    runners = {
        "per-row loop, float32": lambda: per_row(fp32, texts),
        "engine (batched), float32": lambda: engine_run(fp32, texts),
        "engine (batched), float32, 2 threads": with_threads(2, lambda: engine_run(fp32, texts)),
        "engine (batched), int8": lambda: engine_run(int8, texts),
        "per-row loop, int8": lambda: per_row(int8, texts),
    }
    best, outputs = measure(runners, args.rounds)
    loop_s = best["per-row loop, float32"]
    reference = {True: outputs["engine (batched), float32"], False: outputs["per-row loop, float32"]}
    lines = [
        f"{described}; {len(texts)} rows (data/sentiment test + inbox), max_length {MAX_LENGTH}; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 torch thread "
        f"unless said; best of {args.rounds} alternating rounds; tokenizing included",
        "",
        "| runner | rows/s | vs per-row float32 loop | labels = float32's (same batching) | accuracy |",
        "|---|---|---|---|---|",
    ]
    for name, seconds in best.items():
        same = "-" if "float32" in name else agreement(reference["engine" in name], outputs[name])
        lines.append(
            f"| {name} | {len(texts) / seconds:.1f} | {loop_s / seconds:.2f}x | {same} "
            f"| {accuracy(outputs[name], gold, names)} |"
        )
    margin = [abs(p[0] - p[1]) if len(p) == 2 else 1.0 for p in outputs["engine (batched), float32"]]
    near = sum(m < 0.2 for m in margin)
    pairs = zip(labels_of(outputs["engine (batched), float32"]), labels_of(outputs["engine (batched), int8"]))
    flipped = [m for m, (a, b) in zip(margin, pairs) if a != b]
    lines += [
        "",
        f"{near} of {len(texts)} rows sit near the boundary (float32 probabilities within 0.1 of 0.5); "
        f"int8 flips {len(flipped)} label(s), {sum(m < 0.2 for m in flipped)} of them near the boundary "
        f"(largest float32 margin flipped: {max(flipped, default=0.0):.2f}).",
        f"reproduce: HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_int8.py {' '.join(sys.argv[1:])}".rstrip(),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "int8.md").write_text(text)


if __name__ == "__main__":
    main()
