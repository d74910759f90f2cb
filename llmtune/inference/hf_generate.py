"""Generation for `engine: hf`: which decode path a model takes, and how new tokens become text.

Two paths produce the same greedy tokens as row-by-row `model.generate`:
- the continuous-batching loop (`continuous.py`), for decoder-only models whose KV cache is
  transformers' plain `DynamicCache`: rows that finish leave the batch and waiting rows join,
  so no step is spent on finished rows;
- HF `generate` on length-sorted, left-padded batches, for every other model (encoder-decoder
  models, sliding-window or custom caches, PEFT prompt/prefix tuning, empty prompts).

transformers' own continuous batching (`model.generate_batch`) was evaluated and not used: it
has no stop strings, swallows errors (a failed request is logged and left out), samples from
one global generator inside a background thread (which rows share a step depends on timing, so
samples are not reproducible), and switches the model's attention implementation, which a
training run that evaluates through the engine must not see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmtune.inference.batching import TokenBudgetBatcher, left_padded
from llmtune.inference.continuous import ContinuousDecoder, Unsupported
from llmtune.inference.decoding import Decoding, has_stop


def generate_tokens(
    model: Any, tokenizer: Any, encoded: list[list[int]], decoding: Decoding, batcher: TokenBudgetBatcher
) -> list[list[list[int]]]:
    """New tokens for every prompt: `num_return_sequences` token lists per prompt, in order.

    Rows that end early may carry end-of-sequence / padding tokens after their text; use
    `decoding.text_of` to cut them."""
    decoder_model = continuous_model(model)
    if decoder_model is not None and all(encoded):
        try:
            return ContinuousDecoder(decoder_model, tokenizer, decoding, batcher).run(encoded)
        except Unsupported:
            pass  # found at the first prefill, before any result was kept
    return padded_generate(model, tokenizer, encoded, decoding, batcher)


def continuous_model(model: Any) -> Any | None:
    """The module the continuous loop can drive (a LoRA-style PEFT model's base model with its
    adapters injected), or None when only HF `generate` knows how to run this model."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None:
        if peft_config.is_prompt_learning:  # virtual tokens are prepended inside PEFT's generate
            return None
        return model.get_base_model()
    return model


def padded_generate(
    model: Any, tokenizer: Any, encoded: list[list[int]], decoding: Decoding, batcher: TokenBudgetBatcher
) -> list[list[list[int]]]:
    """HF `generate` on length-sorted, left-padded batches under the token budget."""
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    d = decoding
    config = GenerationConfig(
        max_new_tokens=d.max_new_tokens,
        do_sample=d.sampling,
        temperature=d.temperature if d.sampling else None,
        top_p=d.top_p if d.sampling else None,
        top_k=(d.top_k or 0) if d.sampling else None,
        num_return_sequences=d.num_return_sequences,
        pad_token_id=d.pad_id,
        eos_token_id=sorted(d.eos_ids) or None,
        bos_token_id=tokenizer.bos_token_id,
    )
    results: list[list[list[int]]] = [[] for _ in encoded]
    device = next(model.parameters()).device

    def run(batch: list[int]) -> None:
        ids, mask = left_padded([encoded[i] for i in batch], d.pad_id, device)
        criteria = StoppingCriteriaList()
        if d.stop:
            criteria.append(_StopInNewText(tokenizer, d.stop, ids.shape[1]))
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config, stopping_criteria=criteria
            )
        new = out[:, ids.shape[1] :].tolist()
        n = d.num_return_sequences
        for k, i in enumerate(batch):
            results[i] = new[k * n : (k + 1) * n]

    # HF samples from the global generator: seed it without changing the caller's random state
    # (a training run that measures before training must keep its dropout masks)
    with torch.random.fork_rng():
        torch.manual_seed(d.seed)
        batcher.run([len(e) for e in encoded], d.max_new_tokens, d.num_return_sequences, run)
    return results


class _StopInNewText:
    """Stops a row once a stop string appears in its *generated* text. (HF's StopStringCriteria
    also matches across the end of the prompt, which would end some rows before they start.)"""

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.width = prompt_width

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = [has_stop(self.tokenizer, row, self.stop) for row in input_ids[:, self.width :].tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
