"""Benchmark: `engine: hf` generation, continuous batching vs the batched `generate` it replaced.

One process, one model, the same prompts, greedy, side by side:
- old: HF `generate` on length-sorted, left-padded batches under the token budget (a batch
  steps until its longest row ends; the engine's path before continuous batching, still its
  fallback for models the loop cannot drive);
- new: the continuous-batching loop (`llmtune/inference/continuous.py`): a row that ends leaves
  the batch, waiting rows join.
Both through `Engine.generate` (batch_size auto, max_batch_tokens 16384 unless given: with fewer
prompts than the budget holds, all share one batch and no waiting row can join), at 1 and 2
torch threads. The model is a ~20M-parameter scratch llama (BPE tokenizer trained on the
bundled reviews) whose weights are redrawn with a wider spread so that its greedy text varies
(the default initialisation repeats one token); stop strings then end rows at mixed lengths, as
real answers do. The runners take turns, round after round, and each keeps its best round (the
machine may be shared). Times exclude loading and include tokenizing and decoding.

    .venv/bin/python bench/bench_hf_engine.py [--rows 96] [--max-new-tokens 64] [--rounds 2]

Prints a Markdown table and writes it to bench/results/hf_engine.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from provenance import header, load, now, this_command  # noqa: E402

REVIEWS = [ROOT / "data" / "sentiment" / f for f in ("train.jsonl", "test.jsonl", "inbox.jsonl")]
MODEL = {"architecture": "llama", "hidden_size": 448, "num_layers": 6, "num_heads": 7, "tokenizer": "train"}
STOP = ("ly",)  # on this random model: rows end after 2 to 64 tokens, a third run to 64
WEIGHT_STD = 0.08


def build_model() -> Any:
    from llmtune.models.loading import LoadedModel, build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    spec = ScratchModel(**MODEL)
    texts = [json.loads(line)["review"] for path in REVIEWS for line in path.read_text().splitlines()]
    tokenizer = build_tokenizer(spec, texts)
    torch.manual_seed(0)
    model = build_scratch_model(spec, tokenizer, head="causal_lm", labels=None).eval()
    with torch.no_grad():
        for weights in model.parameters():
            if weights.dim() > 1:
                weights.normal_(0, WEIGHT_STD)
    return LoadedModel(model, tokenizer, "scratch", "cpu"), texts


def generate(loaded: Any, prompts: list[str], max_new_tokens: int, continuous: bool, budget: int) -> Any:
    """Engine.generate through the new loop, or forced onto the old batched-generate path."""
    import llmtune.inference.hf_generate as hf_generate
    from llmtune.inference.engine import Engine

    real = hf_generate.continuous_model
    if not continuous:
        hf_generate.continuous_model = lambda model: None
    try:
        return Engine(loaded, max_batch_tokens=budget).generate(
            prompts, max_new_tokens=max_new_tokens, stop=list(STOP)
        )
    finally:
        hf_generate.continuous_model = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch-tokens", type=int, default=16384, help="the engine's token budget")
    args = parser.parse_args()
    started, load_before = now(), load()
    loaded, texts = build_model()
    prompts = [f"Review: {t}\nSummary:" for t in texts[: args.rows]]
    params = sum(p.numel() for p in loaded.model.parameters()) / 1e6
    runners = [(threads, continuous) for threads in (1, 2) for continuous in (False, True)]
    best: dict[tuple[int, bool], float] = {}
    outputs: dict[tuple[int, bool], Any] = {}
    for _ in range(args.rounds):
        for threads, continuous in runners:
            torch.set_num_threads(threads)
            start = time.perf_counter()
            outputs[threads, continuous] = generate(
                loaded, prompts, args.max_new_tokens, continuous, args.max_batch_tokens
            )
            seconds = time.perf_counter() - start
            best[threads, continuous] = min(best.get((threads, continuous), float("inf")), seconds)
    old_texts = [g.texts for g in outputs[1, False]]
    same = sum(a == [g.texts for g in outputs[1, True]][k] for k, a in enumerate(old_texts))
    lengths = [g.new_tokens for g in outputs[1, True]]
    prompt_tokens = statistics.mean(len(loaded.tokenizer(p)["input_ids"]) for p in prompts)
    text = table(best, lengths, same, args, params, prompt_tokens)
    title = "engine hf: continuous batching vs batched generate"
    text = header(title, this_command(), load_before, started) + "\n" + text + "\n"
    print(text)
    out = ROOT / "bench" / "results" / "hf_engine.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def table(best: dict, lengths: list[int], same: int, args: Any, params: float, prompt_tokens: float) -> str:
    tokens = sum(lengths)
    lines = [
        f"Greedy generation, scratch llama {params:.1f}M, {args.rows} prompts of {prompt_tokens:.0f} tokens "
        f"on average, max_new_tokens {args.max_new_tokens}, max_batch_tokens {args.max_batch_tokens}, "
        f"stop {list(STOP)}: new tokens per row min "
        f"{min(lengths)}, median {statistics.median(lengths):.0f}, max {max(lengths)} ({tokens} in all). "
        f"Texts identical old vs new: {same}/{args.rows}. Best of {args.rounds} rounds; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}.",
        "",
        "| threads | path | seconds | rows/s | generated tokens/s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for threads in (1, 2):
        for continuous in (False, True):
            s = best[threads, continuous]
            name = "continuous batching (new)" if continuous else "batched `generate` (old)"
            ratio = best[threads, False] / s
            lines.append(
                f"| {threads} | {name} | {s:.2f} | {args.rows / s:.1f} | {tokens / s:.0f} | {ratio:.2f}x |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
