"""Teacher and student language models measured the same way on the test rows: loss and
perplexity of the gold completions, exact match of greedy completions, and generation speed
(generated tokens/s and rows/s through the shared inference engine, best of a few rounds)."""

from __future__ import annotations

import math
import time
from typing import Any

from llmtune.models.loading import LoadedModel
from llmtune.recipes.distill import DistillGeneration

ROUNDS = 2  # timing rounds per model, alternating; the best counts (the least disturbed)


def completion_loss(
    loaded: LoadedModel, pairs: list[tuple[str, str]], max_length: int, batch_size: int
) -> float:
    """Mean negative log-likelihood per completion token of each (prompt, completion) under the
    model, prompt and completion tokenized together (the completion's tokens are those after the
    prompt's); sequences keep their last `max_length` tokens."""
    import torch
    import torch.nn.functional as F

    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    encoded = []
    for prompt, completion in pairs:
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + completion)["input_ids"]
        labels = [-100] * len(prompt_ids) + ids[len(prompt_ids) :]
        encoded.append((ids[-max_length:], labels[-max_length:]))
    total, count = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch], device=loaded.device)
            mask = torch.tensor(
                [[1] * len(i) + [0] * (width - len(i)) for i, _ in batch], device=loaded.device
            )
            labels = torch.tensor(
                [lab + [-100] * (width - len(lab)) for _, lab in batch], device=loaded.device
            )
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            total += float(
                F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="sum")
            )
            count += int((target != -100).sum())
    return total / max(count, 1)


def lm_metrics(
    loaded: LoadedModel,
    prompts: list[str],
    golds: list[str | None],
    generation: DistillGeneration,
    max_length: int,
    batch_size: int,
) -> tuple[dict[str, Any], list[str]]:
    """loss and perplexity of the gold completions (rows that have one), exact match of greedy
    completions, the first few (prompt, gold, prediction) for the report; and every greedy
    completion, in row order."""
    from llmtune.inference.registry import over_loaded

    answered = [(p, g) for p, g in zip(prompts, golds) if g is not None]
    out: dict[str, Any] = {"n": len(prompts)}
    if answered:
        loss = completion_loss(loaded, answered, max_length, batch_size)
        out.update(loss=loss, perplexity=math.exp(min(loss, 50.0)))
    engine = over_loaded("hf", loaded, batch_size=batch_size, max_length=max_length)
    outputs = engine.generate(
        prompts, max_new_tokens=generation.max_new_tokens, temperature=0.0, stop=generation.stop
    )
    predictions = [g.texts[0] for g in outputs]
    if answered:
        hits = [p.strip() == g.strip() for p, g in zip(predictions, golds) if g is not None]
        out["exact_match"] = sum(hits) / len(hits)
    out["examples"] = [
        {"prompt": p, "gold": g, "prediction": o} for p, g, o in list(zip(prompts, golds, predictions))[:5]
    ]
    return out, predictions


def generation_speed(
    models: dict[str, LoadedModel],
    prompts: list[str],
    generation: DistillGeneration,
    batch_size: int,
    max_length: int,
) -> dict[str, dict[str, Any]]:
    """Generated tokens/s, rows/s and ms per row of each model's greedy completions of the same
    prompts (same batch size, one model after the other in each round, best round counts)."""
    import torch

    from llmtune.inference.registry import over_loaded

    best: dict[str, tuple[float, int]] = {}
    engines = {
        name: over_loaded("hf", m, batch_size=batch_size, max_length=max_length) for name, m in models.items()
    }
    settings = {"max_new_tokens": generation.max_new_tokens, "temperature": 0.0, "stop": generation.stop}
    for engine in engines.values():
        engine.generate(prompts[:batch_size], **settings)  # warm-up
    for _ in range(ROUNDS):
        for name, engine in engines.items():
            started = time.perf_counter()
            tokens = sum(g.new_tokens for g in engine.generate(prompts, **settings))
            seconds = time.perf_counter() - started
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, tokens)
    n = len(prompts)
    return {
        name: {
            "ms_per_row": round(1000 * seconds / n, 3),
            "rows_per_s": round(n / seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1),
            "generated_tokens": tokens,
            "rows": n,
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
        }
        for name, (seconds, tokens) in best.items()
    }
