"""Rankings by several people, and how the stages combine them (`data.aggregate`).

A ranking row may carry one person's ranking (`"ranking": "C > B = D > A"`), several people's
(`"rankings": {"alice": "A > B", "bob": "B > A"}`), or both (the single `ranking` then counts as
one more annotator, named `UNNAMED`). Each is checked with the one grammar (rankings.py).

How the reward, dpo and kto stages turn a row's rankings into what they learn from:

- `all`: every annotator's ranking is used as if it were its own row: two people who agree give
  a pair twice, two who disagree give it once each way (the model sees the disagreement).
- `majority`: a pair `X > Y` is kept when more than half of the row's annotators ranked X above
  Y (a tie is a vote for neither); the rest is dropped. One annotator: their ranking.
- `mean_rank`: each response gets its mean position over the annotators (a tie shares the
  tier's position); responses with the same mean tie; the result is one ranking per row.

A ranking that ties every response (`A = B = C`) says nothing about which is better: it gives no
pair, no tie and no KTO row, and is counted (`all_tied`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Literal

from llmtune.data.formats import kind_of
from llmtune.data.rankings import Pair, Ranking, RankingError, letters, parse_ranking

Aggregate = Literal["all", "majority", "mean_rank"]
UNNAMED = "(ranking)"
"""The annotator of a row's single `ranking` field, next to named ones in `rankings`."""
_NAME = re.compile(r"^[\w.@+-][\w .@+-]{0,63}$")


def check_annotator(name: str) -> str:
    """An annotator's name, stripped; RankingError when it is empty, too long or holds characters
    other than letters, digits, spaces and . @ + - _."""
    name = name.strip()
    if not _NAME.match(name) or name == UNNAMED:
        raise RankingError(
            f"annotator name {name!r} is not allowed: 1 to 64 letters, digits, spaces or . @ + - _"
        )
    return name


def rankings_of(row: dict[str, Any], responses: int) -> dict[str, Ranking]:
    """Every annotator's parsed ranking of `row` (the single `ranking` under UNNAMED); empty
    rankings (not ranked yet) are left out. RankingError with the reason for a bad one."""
    out: dict[str, Ranking] = {}
    single = row.get("ranking")
    if isinstance(single, str) and single.strip():
        out[UNNAMED] = _parse(single, responses, "ranking")
    elif single is not None and not isinstance(single, str):
        raise RankingError(f"'ranking' must be a text like \"C > B = D > A\", got {kind_of(single)}")
    many = row.get("rankings")
    if many is None:
        return out
    if not isinstance(many, dict):
        raise RankingError(f"'rankings' must be an object of annotator name -> ranking, got {kind_of(many)}")
    for name, text in many.items():
        if not isinstance(text, str):
            raise RankingError(f'rankings[{name!r}] must be a text like "C > B", got {kind_of(text)}')
        check_annotator(name)
        if text.strip():
            out[name] = _parse(text, responses, f"rankings[{name!r}]")
    return out


def _parse(text: str, responses: int, what: str) -> Ranking:
    try:
        return parse_ranking(text, responses)
    except RankingError as exc:
        raise RankingError(f"{what} {text!r}: {exc}") from None


def check_distinct(ranking: Ranking, responses: list[str]) -> None:
    """RankingError when two responses with the same text are ranked apart: that would teach
    that a text is better than itself (a plain pair whose chosen == rejected is refused too)."""
    by_letter = dict(zip(letters(len(responses)), responses))
    for pair in ranking.pairs():
        if by_letter[pair.better] == by_letter[pair.worse]:
            raise RankingError(
                f"{pair.better} and {pair.worse} are the same text but ranked apart: "
                f"rank them equal ({pair.better} = {pair.worse})"
            )


def all_tied(ranking: Ranking) -> bool:
    """Whether a ranking ties every response (it tells nothing about which is better)."""
    return len(ranking.tiers) == 1


@dataclass(frozen=True)
class Combined:
    """What one row's rankings give under an aggregate mode: strict pairs, tied pairs, and the
    (best, worst) tiers KTO uses, one per ranking kept."""

    pairs: list[Pair]
    ties: list[tuple[str, str]]
    extremes: list[tuple[tuple[str, ...], tuple[str, ...]]]


def combine(rankings: dict[str, Ranking], responses: int, mode: Aggregate) -> Combined:
    """One row's annotators' rankings combined under `mode` (see the module docstring).
    Rankings that tie everything are left out before combining."""
    kept = [r for r in rankings.values() if not all_tied(r)]
    if not kept:
        return Combined([], [], [])
    if mode == "all" or len(kept) == 1:
        return Combined(
            [p for r in kept for p in r.pairs()],
            [t for r in kept for t in r.ties()],
            [(r.best(), r.worst()) for r in kept],
        )
    if mode == "mean_rank":
        ranking = mean_rank(kept, responses)
        if all_tied(ranking):
            return Combined([], [], [])
        return Combined(ranking.pairs(), ranking.ties(), [(ranking.best(), ranking.worst())])
    return _majority(kept, responses)


def mean_rank(rankings: list[Ranking], responses: int) -> Ranking:
    """Responses ordered by their mean position (ties share their tier's mean position); equal
    means tie."""
    means = {x: fmean(positions(r)[x] for r in rankings) for x in letters(responses)}
    tiers: list[list[str]] = []
    for letter in sorted(means, key=lambda x: (means[x], x)):
        if tiers and abs(means[tiers[-1][0]] - means[letter]) < 1e-9:
            tiers[-1].append(letter)
        else:
            tiers.append([letter])
    return Ranking(tuple(tuple(t) for t in tiers))


def positions(ranking: Ranking) -> dict[str, float]:
    """Each letter's position, 1 = best; tied letters share the mean of the places they span
    (the usual fractional rank: `A > B = C` gives A 1, B 2.5, C 2.5)."""
    out, place = {}, 1
    for tier in ranking.tiers:
        shared = place + (len(tier) - 1) / 2
        out.update({letter: shared for letter in tier})
        place += len(tier)
    return out


def _majority(rankings: list[Ranking], responses: int) -> Combined:
    need = len(rankings) // 2 + 1
    pairs, ties = [], []
    order = letters(responses)
    for i, x in enumerate(order):
        for y in order[i + 1 :]:
            above = [r for r in rankings if _tier(r, x) < _tier(r, y)]
            below = [r for r in rankings if _tier(r, x) > _tier(r, y)]
            if len(above) >= need:
                pairs.append(Pair(x, y, round(fmean(_tier(r, y) - _tier(r, x) for r in above))))
            elif len(below) >= need:
                pairs.append(Pair(y, x, round(fmean(_tier(r, x) - _tier(r, y) for r in below))))
            elif len(rankings) - len(above) - len(below) >= need:
                ties.append((x, y))
    best = {x for x in order if sum(x in r.best() for r in rankings) >= need}
    worst = {x for x in order if sum(x in r.worst() for r in rankings) >= need}
    extremes = [(tuple(sorted(best)), tuple(sorted(worst)))] if best and worst else []
    return Combined(pairs, ties, extremes)


def _tier(ranking: Ranking, letter: str) -> int:
    return next(i for i, tier in enumerate(ranking.tiers) if letter in tier)
