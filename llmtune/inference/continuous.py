"""The continuous-batching decode loop of `engine: hf`.

One KV cache (transformers' `DynamicCache`) holds every active row, left-padded so that each
row's newest token sits in the last column; each step feeds every row its last token. A row that
ends (end-of-sequence, a stop string, `max_new_tokens`) leaves the batch at once: its cache rows
are dropped, and columns that now hold only padding are cut from the left. Waiting prompts join
when a quarter of the batch is free: they are prefilled together as one left-padded batch, their
cache padded on the left to the active width and concatenated. Positions come from the attention
mask, as in `generate`, so padding changes nothing: greedy tokens equal row-by-row
`model.generate`.

Sampling draws from one `torch.Generator` per row, seeded from the call's seed, the prompt's
tokens and the copy number: a row's samples do not depend on the rows that share its batch, the
chunk it came in, or an out-of-memory restart. Nothing touches the global random state.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Any

from llmtune.inference.batching import (
    PADDING_SHARE,
    TokenBudgetBatcher,
    free_memory,
    is_out_of_memory,
    left_padded,
)
from llmtune.inference.decoding import Decoding, has_stop

# Waiting prompts join once this share of the batch's rows is free: every join is one more
# prefill call, so a batch refills in groups rather than one row per step.
REFILL_SHARE = 0.25


class Unsupported(Exception):
    """The model's KV cache is not a plain `DynamicCache`; HF `generate` must run it."""


@dataclass
class _Row:
    """One sequence being generated: a prompt's `copy`-th return sequence."""

    prompt: int
    copy: int
    reserve: int  # prompt tokens + max_new_tokens: what the row may cost at most
    tokens: list[int]
    generator: Any


class _Batch:
    """The active rows, their KV cache and attention mask (left-padded, one column per cached
    token), and the token each row is fed next."""

    def __init__(self, rows: list[_Row], cache: Any, mask: Any) -> None:
        self.rows, self.cache, self.mask = rows, cache, mask
        self.pending: Any = None

    @property
    def longest(self) -> int:
        """The largest reserve of a row: with the row count, what the batch may cost."""
        return max(r.reserve for r in self.rows)

    def merge(self, other: _Batch) -> None:
        """Take in `other`'s rows, padding the narrower cache on the left."""
        import torch

        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)])
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(other.mask, width, 1)])
        self.pending = torch.cat([self.pending, other.pending])
        self.rows += other.rows

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows, and cut the columns that then hold only padding."""
        import torch

        index = torch.tensor(indices, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.pending = self.mask[index], self.pending[index]
        self.rows = [self.rows[k] for k in indices]
        lead = int(self.mask.any(dim=0).long().argmax())  # leading all-padding columns
        if lead:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
            self.mask = self.mask[:, lead:]


class ContinuousDecoder:
    """Generates every prompt's rows through one continuously refilled batch."""

    def __init__(self, model: Any, tokenizer: Any, decoding: Decoding, batcher: TokenBudgetBatcher) -> None:
        """`batcher` holds the token budget and row cap (halved on out-of-memory with
        `batch_size: auto`, as for every other engine call)."""
        import inspect

        self.model, self.tokenizer, self.d, self.batcher = model, tokenizer, decoding, batcher
        self.device = next(model.parameters()).device
        self.warpers = _warpers(decoding)
        # like generate: the prefill computes logits for the last position only
        self.last_only = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.admitting: list[int] = []

    def run(self, encoded: list[list[int]]) -> list[list[list[int]]]:
        """New tokens per prompt and copy; a row ends with its end-of-sequence token, if any."""
        import torch

        results: list[list[list[int]]] = [[[] for _ in range(self.d.num_return_sequences)] for _ in encoded]
        waiting = deque(sorted(range(len(encoded)), key=lambda i: -len(encoded[i])))
        batch: _Batch | None = None
        with torch.inference_mode():
            while waiting or batch is not None:
                try:
                    batch = self._advance(batch, waiting, encoded, results)
                except Exception as exc:
                    if not self._back_off(exc, batch):
                        raise
                    # start the unfinished prompts again, longest first; their finished copies
                    # come out the same (greedy, or from their own generators)
                    live = {r.prompt for r in batch.rows} if batch else set()
                    waiting.extendleft(sorted(live | set(self.admitting), key=lambda i: len(encoded[i])))
                    batch, self.admitting = None, []
        return results

    def _advance(
        self,
        batch: _Batch | None,
        waiting: deque[int],
        encoded: list[list[int]],
        results: list[list[list[int]]],
    ) -> _Batch | None:
        """Admit waiting prompts if there is room, then one decode step; finished rows leave."""
        self.admitting = self._admit(batch, waiting, encoded)
        for group in padding_groups([len(encoded[i]) for i in self.admitting]):
            joined = self._retire(self._prefill([self.admitting[k] for k in group], encoded), results)
            if batch is None:
                batch = joined
            elif joined is not None:
                batch.merge(joined)
        self.admitting = []
        if batch is not None:
            self._step(batch)
            batch = self._retire(batch, results)
        return batch

    def _admit(self, batch: _Batch | None, waiting: deque[int], encoded: list[list[int]]) -> list[int]:
        """Prompts that join now: while rows x longest reserve fit the token budget and the rows
        fit the row cap; nothing until REFILL_SHARE of the batch is free."""
        if not waiting:
            return []
        copies, extra = self.d.num_return_sequences, self.d.max_new_tokens
        rows, longest = (len(batch.rows), batch.longest) if batch else (0, 0)

        def capacity(longest: int) -> float:
            return min(self.batcher.row_cap, self.batcher.max_batch_tokens // max(1, longest))

        room = capacity(max(longest, len(encoded[waiting[0]]) + extra))
        if rows and room - rows < max(copies, REFILL_SHARE * room):
            return []
        admitted: list[int] = []
        while waiting:
            reserve = max(longest, len(encoded[waiting[0]]) + extra)
            if (rows or admitted) and rows + copies > capacity(reserve):
                break
            admitted.append(waiting.popleft())
            rows, longest = rows + copies, reserve
        return admitted

    def _prefill(self, prompts: list[int], encoded: list[list[int]]) -> _Batch:
        """Run the new prompts as one left-padded batch; each row gets its first token."""
        ids, mask = left_padded([encoded[i] for i in prompts], self.d.pad_id, self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        extra = {"logits_to_keep": 1} if self.last_only else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        _check_cache(out.past_key_values)
        logits, copies = out.logits[:, -1, :].float(), self.d.num_return_sequences
        if copies > 1:
            out.past_key_values.batch_repeat_interleave(copies)
            mask, logits = mask.repeat_interleave(copies, dim=0), logits.repeat_interleave(copies, dim=0)
        rows = [
            _Row(i, c, len(encoded[i]) + self.d.max_new_tokens, [], self._generator(encoded[i], c))
            for i in prompts
            for c in range(copies)
        ]
        batch = _Batch(rows, out.past_key_values, mask)
        self._append(batch, logits)
        return batch

    def _step(self, batch: _Batch) -> None:
        """Feed every row its pending token; each gets one new token."""
        import torch

        mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
        out = self.model(
            input_ids=batch.pending[:, None],
            attention_mask=mask,
            position_ids=mask.sum(dim=1, keepdim=True) - 1,
            past_key_values=batch.cache,
            use_cache=True,
        )
        batch.mask = mask
        self._append(batch, out.logits[:, -1, :].float())

    def _append(self, batch: _Batch, logits: Any) -> None:
        """Choose each row's next token (greedy, or sampled from its own generator)."""
        import torch

        if self.d.sampling:
            for warp in self.warpers:
                logits = warp(None, logits)
            probs = torch.softmax(logits, dim=-1)
            chosen = [torch.multinomial(probs[k], 1, generator=r.generator) for k, r in enumerate(batch.rows)]
            batch.pending = torch.cat(chosen)
        else:
            batch.pending = logits.argmax(dim=-1)
        for row, token in zip(batch.rows, batch.pending.tolist()):
            row.tokens.append(token)

    def _retire(self, batch: _Batch, results: list[list[list[int]]]) -> _Batch | None:
        """Hand finished rows to `results`; the batch keeps the rest (None when none are left)."""
        keep = []
        for k, row in enumerate(batch.rows):
            if self._finished(row):
                results[row.prompt][row.copy] = row.tokens
            else:
                keep.append(k)
        if not keep:
            return None
        if len(keep) < len(batch.rows):
            batch.keep(keep)
        return batch

    def _finished(self, row: _Row) -> bool:
        return (
            len(row.tokens) >= self.d.max_new_tokens
            or self.d.ends_row(row.tokens[-1])
            or bool(self.d.stop and has_stop(self.tokenizer, row.tokens, self.d.stop))
        )

    def _generator(self, prompt: list[int], copy: int) -> Any:
        """A generator seeded from (seed, copy, prompt tokens) when sampling, else None."""
        import torch

        if not self.d.sampling:
            return None
        key = repr((self.d.seed, copy, prompt)).encode()
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1)
        return generator

    def _back_off(self, exc: Exception, batch: _Batch | None) -> bool:
        """On out-of-memory with `batch_size: auto`: halve the row cap and say to retry."""
        rows = (len(batch.rows) if batch else 0) + len(self.admitting) * self.d.num_return_sequences
        if not (self.batcher.auto and is_out_of_memory(exc)) or rows <= 1:
            return False
        self.batcher.row_cap = max(1, rows // 2)
        free_memory()
        return True


def _warpers(d: Decoding) -> list[Any]:
    """transformers' sampling warpers, in generate's order: temperature, top-k, top-p."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    if not d.sampling:
        return []
    warpers: list[Any] = [TemperatureLogitsWarper(d.temperature)]
    if d.top_k:
        warpers.append(TopKLogitsWarper(d.top_k))
    if d.top_p < 1.0:
        warpers.append(TopPLogitsWarper(d.top_p))
    return warpers


def _check_cache(cache: Any) -> None:
    """Only a plain DynamicCache can be cut and merged row by row (not sliding windows)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        raise Unsupported(type(cache).__name__)


def _pad_left(tensor: Any, width: int, dim: int) -> Any:
    """Zero-pad `dim` on the left to `width` (zeros: padding columns are masked out)."""
    import torch.nn.functional as F

    missing = width - tensor.shape[dim]
    if not missing:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim) + [missing, 0]
    return F.pad(tensor, pad)


def padding_groups(lengths: list[int]) -> list[list[int]]:
    """Positions of `lengths` (longest first) in runs whose left padding stays under
    PADDING_SHARE of the run's tokens: the prompts joining at once are prefilled run by run, as a
    padded prefill of mixed lengths spends much of its time on padding (on CPU, prefill was half
    of the generation time of 96 reviews)."""
    groups: list[list[int]] = []
    for k, length in enumerate(lengths):
        group = groups[-1] if groups else None
        if group is not None:
            longest = lengths[group[0]]
            real = sum(lengths[j] for j in group) + length
            if (len(group) + 1) * longest - real <= PADDING_SHARE * (len(group) + 1) * longest:
                group.append(k)
                continue
        groups.append([k])
    return groups
