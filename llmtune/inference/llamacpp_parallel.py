"""Greedy generation of several sequences at once on llama.cpp (engine: llamacpp).

llama-cpp-python's `Llama` decodes one sequence at a time: its context is made with
`n_seq_max=1` (the constructor raises it only for `embedding=True`) and its batch puts every
token in sequence 0. llama.cpp itself decodes many: a context with `n_seq_max=N` keeps N
sequences' KV cells apart (`kv_unified=False`: one stream of `n_ctx / N` cells each), and one
`llama_decode` batch carries the next token of every live sequence, so the weights are read
once per step for all of them. This module opens such a context on the `Llama`'s loaded model
through llama-cpp-python's low-level bindings (`llama_cpp.llama_*`, the C API one to one) and
runs continuous batching: a sequence that ends frees its slot for the next prompt at once.

Greedy only (the next token is the argmax of the logits, as `top_k=1` picks it); sampling stays
on `Llama`'s one-at-a-time path, where each row's seeded sampler is its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Slot:
    """One live sequence: which prompt, how many cells it fills, what it generated so far."""

    row: int
    cells: int
    new: list[int] = field(default_factory=list)


class ParallelGreedy:
    """A llama.cpp context of `slots` sequences of `seq_len` cells each, on `llm`'s model."""

    def __init__(self, llm: Any, *, slots: int, seq_len: int, threads: int, n_batch: int = 512) -> None:
        import llama_cpp

        self.lib = llama_cpp
        # `Llama`'s own settings (flash attention off, KV types, rope), so that a row's numbers
        # are computed as on the one-at-a-time path; only the size and the sequences change
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_ctx = slots * -(-seq_len // 256) * 256  # llama.cpp pads each sequence's cells to 256
        params.n_batch = params.n_ubatch = max(n_batch, slots)
        params.n_seq_max = slots
        params.kv_unified = False  # the sequences share no prefix: separate streams attend less
        params.n_threads = params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context of {slots} sequences")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.slots = slots
        self.seq_len = llama_cpp.llama_n_ctx_seq(self.ctx)
        self.n_batch = params.n_batch
        self.n_vocab = llm.n_vocab()
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)

    def close(self) -> None:
        """Free the batch and the context (before the model they were made on)."""
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def fits(self, prompt: Sequence[int], max_new_tokens: int) -> bool:
        """Whether a prompt and its new tokens fit one sequence's cells."""
        return 0 < len(prompt) and len(prompt) + max_new_tokens <= self.seq_len

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        end_ids: set[int],
        stopped: Callable[[list[int]], bool],
    ) -> list[list[int]]:
        """Each prompt's new tokens, in input order, as `Llama.generate` at top_k=1 yields them:
        a row ends at an end id (not kept), at `max_new_tokens`, or when `stopped(new)` says so
        (a stop string in its text). Every prompt must `fit`."""
        import numpy as np

        waiting = deque(range(len(prompts)))
        free = list(range(self.slots - 1, -1, -1))
        live: dict[int, _Slot] = {}
        done: list[list[int]] = [[] for _ in prompts]

        def take(seq: int, token: int) -> None:
            """Keep `token` for the sequence in `seq` or end it (its slot is freed)."""
            slot = live[seq]
            if token not in end_ids and len(slot.new) < max_new_tokens:
                slot.new.append(token)
                if len(slot.new) < max_new_tokens and not stopped(slot.new):
                    return
            done[slot.row] = slot.new
            del live[seq]
            free.append(seq)

        while waiting or live:
            while waiting and free:
                seq, row = free.pop(), waiting.popleft()
                live[seq] = _Slot(row, len(prompts[row]))
                take(seq, self._prefill(seq, prompts[row]))
            if not live:
                continue
            order = list(live)
            for i, seq in enumerate(order):
                slot = live[seq]
                self._put(i, slot.new[-1], slot.cells, seq, logits=True)
                slot.cells += 1
            self._decode(len(order))
            logits = np.ctypeslib.as_array(
                self.lib.llama_get_logits(self.ctx), shape=(len(order), self.n_vocab)
            )
            for seq, token in zip(order, logits.argmax(axis=1).tolist()):
                take(seq, token)
        return done

    def _prefill(self, seq: int, prompt: Sequence[int]) -> int:
        """Clear `seq`'s cells, read the prompt into them (in `n_batch` chunks) and return the
        argmax of the last position's logits."""
        import numpy as np

        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
        for start in range(0, len(prompt), self.n_batch):
            chunk = prompt[start : start + self.n_batch]
            for i, token in enumerate(chunk):
                self._put(i, token, start + i, seq, logits=start + i == len(prompt) - 1)
            self._decode(len(chunk))
        last = self.lib.llama_get_logits_ith(self.ctx, -1)
        return int(np.ctypeslib.as_array(last, shape=(self.n_vocab,)).argmax())

    def _put(self, i: int, token: int, pos: int, seq: int, *, logits: bool) -> None:
        batch = self.batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    def _decode(self, n_tokens: int) -> None:
        self.batch.n_tokens = n_tokens
        code = self.lib.llama_decode(self.ctx, self.batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
