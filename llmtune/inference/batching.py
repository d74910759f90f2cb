"""Length-sorted batches under a token budget, with out-of-memory back-off.

Used by the inference engine: rows of similar length share a batch so padding stays small, a
batch never costs more than `max_batch_tokens`, and with `batch_size: auto` an out-of-memory
error halves the batch (and remembers the size that fits) instead of ending the job.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

# A batch stops growing when padding would pass this share of its tokens (prompt + new tokens).
# Padding is computed like any token; counting new tokens as work keeps batches large when
# decoding dominates (long generations, GPUs) and tight when the prompts dominate (CPU, scoring).
PADDING_SHARE = 0.2


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the errors a smaller batch can avoid: accelerate's test (CUDA, XPU, MPS and CPU
    allocator messages), plus torch's own OutOfMemoryError and Python's MemoryError."""
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, Exception) and should_reduce_batch_size(exc)


def free_memory() -> None:
    """Give cached accelerator memory back after a model or an oversized batch is dropped."""
    from accelerate.utils.memory import clear_device_cache

    clear_device_cache(garbage_collection=True)


class TokenBudgetBatcher:
    """Groups row indices into batches by length under a token budget."""

    def __init__(self, max_batch_tokens: int, batch_size: int | Literal["auto"] = "auto") -> None:
        self.max_batch_tokens = max_batch_tokens
        self.auto = batch_size == "auto"
        # a fixed batch_size caps rows per batch; auto starts uncapped and halves on OOM
        self.row_cap: float = math.inf if batch_size == "auto" else batch_size

    def run(self, lengths: list[int], extra: int, copies: int, work: Callable[[list[int]], None]) -> None:
        """Call `work(indices)` on length-sorted batches, backing off on out-of-memory.

        A batch costs rows x (longest prompt + `extra` new tokens) x `copies` tokens, and stops
        growing when its padding would pass PADDING_SHARE of that.
        """
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        start = 0
        while start < len(order):
            longest = lengths[order[start]] + extra
            fit = max(1, self.max_batch_tokens // max(1, longest * copies))
            limit = int(min(fit, self.row_cap, len(order) - start))
            size, real = 1, longest
            while size < limit:  # rows are sorted longest first: padding only grows
                candidate = lengths[order[start + size]] + extra
                if (size + 1) * longest - (real + candidate) > PADDING_SHARE * (size + 1) * longest:
                    break
                real += candidate
                size += 1
            try:
                work(order[start : start + size])
            except Exception as exc:
                if not (self.auto and is_out_of_memory(exc)) or size == 1:
                    raise
                self.row_cap = max(1, size // 2)
                free_memory()
                continue
            start += size


def left_padded(seqs: list[list[int]], pad_id: int, device: object) -> tuple[Any, Any]:
    """Token lists as one left-padded batch: (ids, attention mask), both long, on `device`.
    Left padding keeps every row's last token in the last column, where decoding continues."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)
