"""What one `Engine.generate` call asks for, and how a row's new tokens become its text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Decoding:
    """The whole decoding config of one `Engine.generate` call."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int | None
    stop: tuple[str, ...]
    num_return_sequences: int
    seed: int
    pad_id: int
    eos_ids: frozenset[int]

    @property
    def sampling(self) -> bool:
        """temperature 0 is greedy; above 0 samples."""
        return self.temperature > 0

    def ends_row(self, token: int) -> bool:
        """End-of-sequence (or padding: nothing after it is kept) ends a row."""
        return token in self.eos_ids or token == self.pad_id


def text_of(tokenizer: Any, tokens: list[int], decoding: Decoding) -> tuple[str, int]:
    """Text of new tokens up to end-of-sequence, cut before the first stop string, and the
    number of tokens generated (end-of-sequence and what follows it not counted)."""
    used = next((n for n, token in enumerate(tokens) if decoding.ends_row(token)), len(tokens))
    text = tokenizer.decode(tokens[:used], skip_special_tokens=True)
    cuts = [text.find(s) for s in decoding.stop if s and s in text]
    return (text[: min(cuts)] if cuts else text), used


def has_stop(tokenizer: Any, tokens: list[int], stop: Sequence[str]) -> bool:
    """Whether a stop string appears in the text of a row's *generated* tokens."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return any(s and s in text for s in stop)
