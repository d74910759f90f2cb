"""Rankings such as `C > B = D > A`: parsing, checking and expansion into preference pairs.

A ranking orders a prompt's responses, lettered A, B, C... in the order they are listed: `>` means
better, `=` a tie, and every letter appears exactly once. It is read into tiers, best first
(`C > B = D > A` is [[C], [B, D], [A]]), and expanded into every strictly ordered pair: C>B, C>D,
C>A, B>A, D>A (5 pairs). Tied responses never become a preference; they are kept as tied pairs
(B=D), which the reward stage measures (a good reward model scores them close together).

The one grammar lives here, for `llmtune rank` (which refuses a malformed answer with its reason)
and for the stages that read rankings (which refuse the data with file:line).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from itertools import combinations

LETTERS = string.ascii_uppercase
MAX_RESPONSES = len(LETTERS)
_TOKEN = re.compile(r"\s*([A-Za-z]+|>|=|\S)")


class RankingError(ValueError):
    """A ranking that does not parse or does not rank every response exactly once; the message
    is the reason, in words a person at the keyboard understands."""


def letters(count: int) -> list[str]:
    """The letters of `count` responses: A, B, C..."""
    if not 1 <= count <= MAX_RESPONSES:
        raise RankingError(f"{count} responses cannot be lettered A..Z (1 to {MAX_RESPONSES})")
    return list(LETTERS[:count])


@dataclass(frozen=True)
class Pair:
    """One strict preference: `better` over `worse`, `distance` tiers apart (1 = adjacent)."""

    better: str
    worse: str
    distance: int


@dataclass(frozen=True)
class Ranking:
    """Tiers of letters, best first; letters inside a tier are tied."""

    tiers: tuple[tuple[str, ...], ...]

    def __str__(self) -> str:
        return " > ".join(" = ".join(tier) for tier in self.tiers)

    def pairs(self) -> list[Pair]:
        """Every strictly ordered pair, better first: n(n-1)/2 minus the tied pairs."""
        out = []
        for (i, upper), (j, lower) in combinations(enumerate(self.tiers), 2):
            out += [Pair(a, b, j - i) for a in upper for b in lower]
        return out

    def ties(self) -> list[tuple[str, str]]:
        """Every tied pair (same tier)."""
        return [pair for tier in self.tiers for pair in combinations(tier, 2)]

    def best(self) -> tuple[str, ...]:
        return self.tiers[0]

    def worst(self) -> tuple[str, ...]:
        return self.tiers[-1]


def parse_ranking(text: str, count: int) -> Ranking:
    """Read `text` as a ranking of `count` responses; RankingError says what is wrong.

    Letters may be lower case and spaces are optional (`c>b=d>a`); a ranking that names every
    letter but one is not accepted: every response must be placed."""
    allowed = letters(count)
    if not isinstance(text, str) or not text.strip():
        raise RankingError("the ranking is empty")
    tokens = _tokens(text)
    tiers: list[list[str]] = [[]]
    expect_letter = True
    for token in tokens:
        if expect_letter:
            if token in (">", "="):
                raise RankingError(f"{token!r} where a letter was expected (write it like C > B = D > A)")
            if not token.isalpha():
                raise RankingError(f"{token!r} is not a letter, '>' or '=' (write it like C > B = D > A)")
            if len(token) > 1:
                if set(token.upper()) <= set(allowed):
                    raise RankingError(
                        f"{token!r}: put '>' or '=' between letters (write it like C > B = D > A)"
                    )
                raise RankingError(f"{token!r} is not a ranking (write it like C > B = D > A)")
            letter = token.upper()
            if letter not in allowed:
                raise RankingError(f"no response {letter}: the responses are {_span(allowed)}")
            if any(letter in tier for tier in tiers):
                raise RankingError(f"{letter} appears twice; every letter goes in once")
            tiers[-1].append(letter)
        elif token == ">":
            tiers.append([])
        elif token != "=":
            raise RankingError(f"{token!r} after a letter: expected '>' (better) or '=' (tie)")
        expect_letter = not expect_letter
    if expect_letter:
        raise RankingError(f"the ranking ends with {tokens[-1]!r}; it must end with a letter")
    placed = {letter for tier in tiers for letter in tier}
    missing = [letter for letter in allowed if letter not in placed]
    if missing:
        raise RankingError(f"{', '.join(missing)} not ranked; every one of {_span(allowed)} goes in once")
    return Ranking(tuple(tuple(tier) for tier in tiers))


def _tokens(text: str) -> list[str]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:  # only trailing spaces are left
            break
        tokens.append(match.group(1))
        position = match.end()
    return tokens


def _span(allowed: list[str]) -> str:
    return allowed[0] if len(allowed) == 1 else f"{allowed[0]}..{allowed[-1]}"
