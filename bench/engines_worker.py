"""One library runner of bench_engines.py, as its own process: vLLM's `LLM.generate`, the HF
`text-generation` pipeline or a per-row `model.generate` loop over a rows file. Writes
{"steady_s": seconds of the timed call, "outputs": {id: text}}; the caller times the process.

    python bench/engines_worker.py KIND MODEL_DIR ROWS.jsonl OUT.json MAX_NEW_TOKENS THREADS
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def prompt_of(row: dict[str, Any]) -> str:
    """The prompt TEMPLATE renders for a row (the library runners have no Jinja)."""
    return f"Review {row['n']}: {row['review']}\nSummary:"


def worker(kind: str, model: str, rows_file: str, out: str, max_new_tokens: int, threads: int) -> None:
    """Run one library runner on the rows and write {steady_s, outputs} to `out`."""
    rows = [json.loads(line) for line in Path(rows_file).read_text().splitlines()]
    prompts = [prompt_of(r) for r in rows]
    generate = {"vllm": _vllm_runner, "pipeline": _pipeline_runner, "loop": _loop_runner}[kind]
    run = generate(model, max_new_tokens, threads)  # loads the model; returns the timed call
    start = time.perf_counter()
    texts = run(prompts)
    steady = time.perf_counter() - start
    outputs = {r["id"]: t for r, t in zip(rows, texts)}
    Path(out).write_text(json.dumps({"steady_s": steady, "outputs": outputs}))


def _vllm_runner(model: str, max_new_tokens: int, threads: int) -> Any:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="float32", max_model_len=512, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    return lambda prompts: [o.outputs[0].text for o in llm.generate(prompts, params, use_tqdm=False)]


def _hf_model(model: str, threads: int) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    return AutoModelForCausalLM.from_pretrained(model).eval(), AutoTokenizer.from_pretrained(model)


def _pipeline_runner(model: str, max_new_tokens: int, threads: int) -> Any:
    from transformers import pipeline

    lm, tok = _hf_model(model, threads)
    tok.padding_side = "left"  # decoder-only batches must be left-padded
    pipe = pipeline("text-generation", model=lm, tokenizer=tok, device="cpu")
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False, batch_size=16)
    return lambda prompts: [out[0]["generated_text"] for out in pipe(prompts, **kwargs)]


def _loop_runner(model: str, max_new_tokens: int, threads: int) -> Any:
    import torch

    lm, tok = _hf_model(model, threads)

    def run(prompts: list[str]) -> list[str]:
        texts = []
        with torch.inference_mode():
            for p in prompts:
                enc = tok(p, return_tensors="pt")
                ids = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
                texts.append(tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
        return texts

    return run


if __name__ == "__main__":  # vLLM spawns processes that re-import the main module: guard it
    kind, model, rows_file, out, max_new, threads = sys.argv[1:7]
    worker(kind, model, rows_file, out, int(max_new), int(threads))
