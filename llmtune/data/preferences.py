"""Preference rows -> pairs: what the reward, dpo and kto stages learn from.

A row is either a pair (`prompt`, `chosen`, `rejected`) or a ranking (`prompt`, `responses`,
`ranking`, see `rankings.py`). A ranking becomes every strictly ordered pair, with the number of
tiers between them as the pair's `distance`; its tied responses become tied pairs (never a
preference). A row whose ranking is empty is not ranked yet: it is skipped and counted. A ranking
that does not parse, or responses that are not a list of texts, is a bad row named by file:line;
so is a ranking that puts two identical texts apart (like a pair whose chosen == rejected).

A row ranked by several people (`rankings: {alice: ..., bob: ...}`) is combined as
`data.aggregate` says (annotators.py); a ranking that ties every response gives nothing and is
counted (`all_tied`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmtune.data.annotators import Aggregate, all_tied, check_distinct, combine, rankings_of
from llmtune.data.formats import kind_of
from llmtune.data.rankings import MAX_RESPONSES, Ranking, RankingError, letters, parse_ranking
from llmtune.data.readers import SKIP_HINT, Rows, refuse
from llmtune.errors import BadInput, Problem


@dataclass(frozen=True)
class PreferencePair:
    """`chosen` is better than `rejected` as an answer to `prompt`."""

    prompt: Any  # text, or a list of chat messages
    chosen: str
    rejected: str
    distance: int = 1
    """Tiers between the two in their ranking (1 for adjacent tiers and for plain pairs)."""
    where: str = ""
    group: int = 0
    """Index of the row the pair comes from: pairs of one ranking share it."""


@dataclass(frozen=True)
class TiedPair:
    """Two responses ranked equal: information about taste, never a preference."""

    prompt: Any
    first: str
    second: str
    where: str = ""
    group: int = 0


@dataclass(frozen=True)
class Graded:
    """An unpaired row for KTO: `completion` is a good (True) or bad (False) answer to `prompt`."""

    prompt: Any
    completion: str
    good: bool
    where: str = ""


@dataclass
class Preferences:
    """All pairs of one split, and how they were made (counted in the summary and the report)."""

    pairs: list[PreferencePair] = field(default_factory=list)
    ties: list[TiedPair] = field(default_factory=list)
    rankings: int = 0
    """Ranked rows read."""
    pair_rows: int = 0
    """Rows that were already pairs."""
    unranked: int = 0
    """Rows with an empty ranking (not ranked yet): skipped."""
    skipped: int = 0
    """Bad rows skipped (data.skip_bad_rows)."""
    all_tied: int = 0
    """Rankings that tie every response: they say nothing about which is better, so they give
    no pair (counted, not used)."""
    annotated: list[dict[str, Any]] = field(default_factory=list)
    """Every ranked row's annotators' rankings as {name: Ranking} (agreement is measured on them)."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """The rows used, in order (their index is a pair's `group`)."""

    def counts(self) -> dict[str, int]:
        return {
            "rows": self.rankings + self.pair_rows,
            "rankings": self.rankings,
            "pair_rows": self.pair_rows,
            "pairs": len(self.pairs),
            "tied_pairs": len(self.ties),
            "unranked": self.unranked,
            "skipped": self.skipped,
            "all_tied": self.all_tied,
        }


def is_ranking(row: dict[str, Any]) -> bool:
    return "responses" in row or "ranking" in row


def preferences_of(
    rows: Rows,
    *,
    skip_bad_rows: bool = False,
    key: str = "data.train",
    prompt_field: bool = True,
    aggregate: Aggregate = "all",
) -> Preferences:
    """The pairs (and tied pairs) of one split's rows; bad rows are refused together (exit 2) with
    file:line and reason, or skipped and counted with `skip_bad_rows`. `prompt_field=False`: rows
    need no `prompt` (data.template builds it from other fields). `aggregate`: how several
    annotators' rankings of a row are combined (annotators.py)."""
    out, bad = Preferences(), []
    for row, where in zip(rows.rows, rows.where):
        try:
            _add(out, row, where, prompt_field, aggregate)
        except RankingError as exc:
            bad.append(Problem(str(exc), file=where))
    if bad and not skip_bad_rows:
        refuse(bad, f"{len(bad)} bad row(s): {SKIP_HINT}")
    out.skipped = len(bad) + rows.skipped
    if not out.pairs:
        unranked = f" ({out.unranked} not ranked yet)" if out.unranked else ""
        unranked += f" ({out.all_tied} ranking(s) tie every response)" if out.all_tied else ""
        raise BadInput(
            f"no preference pairs in {key}{unranked}: rank the rows first (llmtune rank FILE)", key=key
        )
    return out


@dataclass
class GradedRows:
    """KTO's rows of one split, and the rankings that gave none because they tie everything."""

    rows: list[Graded]
    all_tied: int = 0


def graded_of(
    rows: Rows, *, skip_bad_rows: bool = False, key: str = "data.train", aggregate: Aggregate = "all"
) -> GradedRows:
    """KTO's unpaired rows: `completion` with a `label` (true/false, good/bad, 1/0), or a ranking
    whose best tier is good and whose worst tier is bad (middle tiers are not used; a ranking
    that ties everything gives nothing, counted)."""
    out, bad, tied = [], [], 0
    for row, where in zip(rows.rows, rows.where):
        try:
            if is_ranking(row):
                if row.get("prompt") in (None, ""):
                    raise RankingError("row has no 'prompt'")
                people = row_rankings(row)
                combined = combine(people, len(row["responses"]), aggregate)
                tied += bool(people) and not combined.extremes
                texts = dict(zip(letters(len(row["responses"])), row["responses"]))
                for best, worst in combined.extremes:
                    out += [Graded(row.get("prompt"), texts[x], True, where) for x in best]
                    out += [Graded(row.get("prompt"), texts[x], False, where) for x in worst]
            else:
                out.append(
                    Graded(row.get("prompt"), _text(row, "completion"), _good(row.get("label")), where)
                )
        except RankingError as exc:
            bad.append(Problem(str(exc), file=where))
    if bad and not skip_bad_rows:
        refuse(bad, f"{len(bad)} bad row(s): {SKIP_HINT}")
    if not any(g.good for g in out) or all(g.good for g in out):
        tied_note = f" ({tied} ranking(s) tie every response and give none)" if tied else ""
        raise BadInput(
            f"kto needs both good and bad rows in {key} (label true and false){tied_note}", key=key
        )
    return GradedRows(out, tied)


def ranking_of(row: dict[str, Any]) -> Ranking | None:
    """A ranking row's ranking, parsed (None: not ranked yet); RankingError, with the reason, for
    responses that are not 2 to 26 texts or a ranking that does not parse. The one check of a
    ranking row, for the stages that read them and for `llmtune rank`."""
    responses = row.get("responses")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise RankingError("'responses' must be a list of texts")
    if not 2 <= len(responses) <= MAX_RESPONSES:
        raise RankingError(f"'responses' has {len(responses)} texts; a ranking needs 2 to {MAX_RESPONSES}")
    text = row.get("ranking")
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if not isinstance(text, str):
        raise RankingError(f"'ranking' must be a text like \"C > B = D > A\", got {kind_of(text)}")
    try:
        return parse_ranking(text, len(responses))
    except RankingError as exc:
        raise RankingError(f"ranking {text!r}: {exc}") from None


def row_rankings(row: dict[str, Any]) -> dict[str, Ranking]:
    """Every annotator's ranking of a ranking row (its `ranking`, its `rankings`), checked: the
    responses are 2 to 26 texts, each ranking parses and never puts two identical texts apart.
    RankingError with the reason otherwise."""
    ranking_of(row)
    people = rankings_of(row, len(row["responses"]))
    for ranking in people.values():
        check_distinct(ranking, row["responses"])
    return people


def _add(
    out: Preferences, row: dict[str, Any], where: str, prompt_field: bool = True, aggregate: Aggregate = "all"
) -> None:
    if prompt_field and row.get("prompt") in (None, ""):
        raise RankingError("row has no 'prompt'")
    group = len(out.rows)
    if not is_ranking(row):
        chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
        if chosen == rejected:
            raise RankingError("'chosen' and 'rejected' are the same text")
        out.pairs.append(PreferencePair(row.get("prompt"), chosen, rejected, 1, where, group))
        out.pair_rows += 1
        out.rows.append(row)
        return
    people = row_rankings(row)
    if not people:
        out.unranked += 1
        return
    responses = row["responses"]
    combined = combine(people, len(responses), aggregate)
    out.annotated.append(people)
    if all(all_tied(r) for r in people.values()):
        out.all_tied += 1
        return
    by_letter = dict(zip(letters(len(responses)), responses))
    for pair in combined.pairs:
        out.pairs.append(
            PreferencePair(
                row.get("prompt"), by_letter[pair.better], by_letter[pair.worse], pair.distance, where, group
            )
        )
    for first, second in combined.ties:
        out.ties.append(TiedPair(row.get("prompt"), by_letter[first], by_letter[second], where, group))
    out.rankings += 1
    out.rows.append(row)


def _text(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value:
        raise RankingError(f"row has no '{name}' text")
    return value


def _good(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "good", "1", "yes", "desirable"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "bad", "0", "no", "undesirable"):
        return False
    raise RankingError(f"'label' {value!r} is not good or bad (true/false, good/bad, 1/0)")
