"""Several people's rankings: agreement (checked against Krippendorff's alpha worked out by hand),
`data.aggregate` (all / majority / mean_rank on rows with known majorities), and rankings that
say nothing (all tied; identical texts put apart)."""

from __future__ import annotations

from collections import Counter
from itertools import permutations

import pytest

from llmtune.data.agreement import agreement_of
from llmtune.data.annotators import combine, mean_rank, positions, rankings_of
from llmtune.data.preferences import graded_of, preferences_of
from llmtune.data.rankings import parse_ranking
from llmtune.data.readers import Rows
from llmtune.errors import BadInput

# three people, two prompts; positions (1 = best, ties share the mean place):
#   p1: al A1 B2 C3 | bo A1 B2 C3 | cy B1 A2 C3
#   p2: al A1.5 B1.5 | bo A1 B2    (cy did not rank p2)
FIXTURE = [
    ("p1", {"al": "A > B > C", "bo": "A > B > C", "cy": "B > A > C"}, 3),
    ("p2", {"al": "A = B", "bo": "A > B"}, 2),
]


def parsed(fixture: list) -> list:
    return [(name, {p: parse_ranking(t, n) for p, t in people.items()}) for name, people, n in fixture]


def alpha_by_hand(units: list[list[float]]) -> float:
    """Krippendorff's ordinal alpha from its definition: the coincidence matrix o_ck (each pair of
    values within a unit, weighted 1 / (m_u - 1)), n_c its margins, the ordinal distance
    delta_ck = (sum of n_g for g from c to k - (n_c + n_k) / 2) ** 2, and
    alpha = 1 - (n - 1) * sum(o_ck delta_ck) / sum(n_c n_k delta_ck)."""
    o: Counter = Counter()
    for values in units:
        if len(values) < 2:
            continue
        for i, j in permutations(range(len(values)), 2):
            o[values[i], values[j]] += 1 / (len(values) - 1)
    values = sorted({c for c, _ in o})
    n_c = {c: sum(w for (a, _), w in o.items() if a == c) for c in values}
    n = sum(n_c.values())

    def delta(c: float, k: float) -> float:
        lo, hi = sorted((values.index(c), values.index(k)))
        return (sum(n_c[g] for g in values[lo : hi + 1]) - (n_c[c] + n_c[k]) / 2) ** 2

    observed = sum(w * delta(c, k) for (c, k), w in o.items())
    expected = sum(n_c[c] * n_c[k] * delta(c, k) for c in values for k in values)
    return 1 - (n - 1) * observed / expected


def test_krippendorffs_alpha_and_pairwise_agreement_match_the_hand_computation() -> None:
    found = agreement_of(parsed(FIXTURE))
    units = [[1, 1, 2], [2, 2, 1], [3, 3, 3], [1.5, 1], [1.5, 2]]  # A, B, C of p1; A, B of p2
    assert found.alpha == pytest.approx(alpha_by_hand(units), abs=1e-9)
    # p1: al-bo agree on 3 of 3 response pairs, al-cy and bo-cy on 2 of 3 (A/B flipped); p2: 0 of 1
    assert found.comparisons == 10 and found.pairwise == pytest.approx(7 / 10)
    assert [(p.name, round(p.agreement, 4)) for p in found.per_prompt] == [("p1", 0.7778), ("p2", 0.0)]
    assert [p.name for p in found.most_disagreed()] == ["p2", "p1"]
    assert found.annotators == {"al": 2, "bo": 2, "cy": 1} and found.shared_rows == 2


def test_perfect_agreement_is_one_and_a_lone_annotator_measures_nothing() -> None:
    same = agreement_of(parsed([("p", {"a": "C > B > A", "b": "C > B > A"}, 3)]))
    assert same.pairwise == 1.0 and same.alpha == pytest.approx(1.0)
    alone = agreement_of(parsed([("p", {"a": "C > B > A"}, 3)]))
    assert alone.pairwise is None and alone.alpha is None and alone.shared_rows == 0


def test_tied_responses_share_the_mean_of_their_places() -> None:
    assert positions(parse_ranking("A > B = C > D", 4)) == {"A": 1, "B": 2.5, "C": 2.5, "D": 4}


# two of three put A first; B vs C is split one way, one the other way, one tie
PEOPLE = {"al": "A > B > C", "bo": "A > C > B", "cy": "B = C > A"}


def pairs_of(mode: str) -> list[tuple[str, str]]:
    people = {p: parse_ranking(t, 3) for p, t in PEOPLE.items()}
    return sorted((pair.better, pair.worse) for pair in combine(people, 3, mode).pairs)


def test_aggregate_all_keeps_every_annotators_pairs() -> None:
    assert pairs_of("all") == sorted(
        [("A", "B"), ("A", "C"), ("B", "C"), ("A", "B"), ("A", "C"), ("C", "B"), ("B", "A"), ("C", "A")]
    )


def test_aggregate_majority_keeps_only_what_most_annotators_say() -> None:
    # A > B: al, bo (2 of 3); A > C: al, bo; B vs C: al B, bo C, cy tie -> no majority, dropped
    assert pairs_of("majority") == [("A", "B"), ("A", "C")]


def test_aggregate_mean_rank_orders_by_mean_position() -> None:
    # means: A (1 + 1 + 3) / 3 = 1.67, B (2 + 3 + 1.5) / 3 = 2.17, C (3 + 2 + 1.5) / 3 = 2.17: B = C
    people = [parse_ranking(t, 3) for t in PEOPLE.values()]
    assert str(mean_rank(people, 3)) == "A > B = C"
    assert pairs_of("mean_rank") == [("A", "B"), ("A", "C")]


def rows(*items: dict) -> Rows:
    return Rows(list(items), [f"f.jsonl:{n}" for n in range(1, len(items) + 1)])


def test_the_stages_read_several_annotators_per_row_under_each_mode() -> None:
    data = rows(
        {"prompt": "P", "responses": ["a", "b", "c"], "rankings": PEOPLE},
        {"prompt": "Q", "responses": ["x", "y"], "ranking": "B > A"},
    )
    every = preferences_of(data, aggregate="all")
    assert len(every.pairs) == 8 + 1 and len(every.annotated) == 2
    most = preferences_of(data, aggregate="majority")
    assert sorted((p.chosen, p.rejected) for p in most.pairs) == [("a", "b"), ("a", "c"), ("y", "x")]
    # KTO, majority: good when most put it in their best tier (A), bad when most put it in their
    # worst: no response is (C, B, A one each), so P gives nothing
    kto = graded_of(data, aggregate="majority").rows
    assert sorted((g.completion, g.good) for g in kto) == [("x", False), ("y", True)]
    kto_all = graded_of(data, aggregate="all").rows
    assert Counter((g.completion, g.good) for g in kto_all)[("a", True)] == 2


def test_a_ranking_that_ties_everything_gives_nothing_and_is_counted() -> None:
    data = rows(
        {"prompt": "P", "responses": ["a", "b", "c"], "ranking": "A = B = C"},
        {"prompt": "Q", "responses": ["x", "y"], "ranking": "A > B"},
    )
    prefs = preferences_of(data)
    assert [(p.chosen, p.rejected) for p in prefs.pairs] == [("x", "y")]
    assert prefs.ties == [] and prefs.counts()["all_tied"] == 1
    graded = graded_of(data)
    assert sorted((g.completion, g.good) for g in graded.rows) == [("x", True), ("y", False)]
    assert graded.all_tied == 1
    with pytest.raises(BadInput, match="1 ranking\\(s\\) tie every response"):
        graded_of(rows({"prompt": "P", "responses": ["a", "b"], "ranking": "A = B"}))


def test_identical_texts_ranked_apart_are_refused_like_a_pair_whose_chosen_is_rejected() -> None:
    same = rows({"prompt": "P", "responses": ["same", "same", "other"], "ranking": "A > B > C"})
    with pytest.raises(BadInput, match="f.jsonl:1: A and B are the same text but ranked apart"):
        preferences_of(same)
    with pytest.raises(BadInput, match="the same text"):
        preferences_of(rows({"prompt": "P", "chosen": "same", "rejected": "same"}))
    tied = rows({"prompt": "P", "responses": ["same", "same", "other"], "ranking": "A = B > C"})
    assert len(preferences_of(tied).pairs) == 2


def test_a_bad_annotators_ranking_is_named() -> None:
    with pytest.raises(ValueError, match="rankings\\['bo'\\] 'A > D': no response D"):
        rankings_of({"responses": ["a", "b"], "rankings": {"al": "A > B", "bo": "A > D"}}, 2)
