"""The ranking grammar (`C > B = D > A`) and how preference rows become pairs: what `llmtune rank`
accepts and what the reward, dpo and kto stages learn from."""

from __future__ import annotations

import pytest

from llmtune.data.preferences import graded_of, preferences_of
from llmtune.data.rankings import Pair, RankingError, letters, parse_ranking
from llmtune.data.readers import Rows
from llmtune.errors import BadInput


@pytest.mark.parametrize(
    ("text", "count", "tiers"),
    [
        ("C > B = D > A", 4, (("C",), ("B", "D"), ("A",))),
        ("c>b=d>a", 4, (("C",), ("B", "D"), ("A",))),
        ("  A>B  ", 2, (("A",), ("B",))),
        ("B = A", 2, (("B", "A"),)),
        ("A > B > C", 3, (("A",), ("B",), ("C",))),
    ],
)
def test_a_ranking_is_read_into_tiers_best_first(text: str, count: int, tiers: tuple) -> None:
    ranking = parse_ranking(text, count)
    assert ranking.tiers == tiers
    assert parse_ranking(str(ranking), count) == ranking  # the canonical text reads back the same
    assert ranking.best() == tiers[0] and ranking.worst() == tiers[-1]


def test_the_canonical_text_has_upper_case_letters_and_spaced_signs() -> None:
    assert str(parse_ranking("c>b=d>a", 4)) == "C > B = D > A"


@pytest.mark.parametrize(
    ("text", "count", "reason"),
    [
        ("C > E > B > A", 4, "no response E: the responses are A..D"),
        ("A > B > A", 2, "A appears twice"),
        ("A > B", 3, "C not ranked"),
        ("A > B", 4, "C, D not ranked"),
        ("the first one is best", 3, "is not a ranking"),
        ("AB", 2, "put '>' or '=' between letters"),
        ("A > B >", 2, "ends with '>'"),
        ("A >> B", 2, "'>' where a letter was expected"),
        ("> A > B", 2, "'>' where a letter was expected"),
        ("A B", 2, "'B' after a letter"),
        ("A < B", 2, "'<' after a letter"),
        ("1 > 2", 2, "'1' is not a letter"),
        ("", 2, "empty"),
        ("   ", 2, "empty"),
    ],
)
def test_a_malformed_ranking_is_refused_with_its_reason(text: str, count: int, reason: str) -> None:
    with pytest.raises(RankingError) as caught:
        parse_ranking(text, count)
    assert reason in str(caught.value)


def test_two_to_twenty_six_responses_are_lettered_a_to_z() -> None:
    assert letters(2) == ["A", "B"]
    assert "".join(letters(26)) == "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    whole = " > ".join(reversed(letters(26)))
    assert parse_ranking(whole, 26).best() == ("Z",)
    assert len(parse_ranking(whole, 26).pairs()) == 26 * 25 // 2
    with pytest.raises(RankingError):
        letters(27)


def test_a_ranking_of_four_with_one_tie_gives_five_pairs_with_their_distances() -> None:
    ranking = parse_ranking("C > B = D > A", 4)
    assert sorted(ranking.pairs(), key=lambda p: (p.better, p.worse)) == [
        Pair("B", "A", 1),
        Pair("C", "A", 2),
        Pair("C", "B", 1),
        Pair("C", "D", 1),
        Pair("D", "A", 1),
    ]
    assert ranking.ties() == [("B", "D")]


def test_ties_are_never_a_preference() -> None:
    ranking = parse_ranking("A = B = C = D = E", 5)
    assert ranking.pairs() == []
    assert len(ranking.ties()) == 5 * 4 // 2


@pytest.mark.parametrize("n", [2, 3, 7])
def test_a_strict_chain_of_n_gives_every_pair(n: int) -> None:
    ranking = parse_ranking(" > ".join(letters(n)), n)
    pairs = ranking.pairs()
    assert len(pairs) == n * (n - 1) // 2
    assert ranking.ties() == []
    assert all(letters(n).index(p.better) < letters(n).index(p.worse) for p in pairs)
    assert max(p.distance for p in pairs) == n - 1


# ---- preference rows -> pairs (reward, dpo) and graded rows (kto)


def rows(*items: dict) -> Rows:
    return Rows(list(items), [f"prefs.jsonl:{n}" for n in range(1, len(items) + 1)])


RANKED = {"prompt": "Q?", "responses": ["a", "b", "c", "d"], "ranking": "C > B = D > A"}
PAIR = {"prompt": "P?", "chosen": "yes", "rejected": "no"}
UNRANKED = {"prompt": "U?", "responses": ["x", "y"], "ranking": ""}


def test_rankings_and_pairs_become_preference_pairs_and_unranked_rows_are_counted() -> None:
    prefs = preferences_of(rows(RANKED, PAIR, UNRANKED))
    assert prefs.counts() == {
        "rows": 2,
        "rankings": 1,
        "pair_rows": 1,
        "pairs": 6,
        "tied_pairs": 1,
        "unranked": 1,
        "skipped": 0,
        "all_tied": 0,
    }
    by_text = {(p.chosen, p.rejected): p for p in prefs.pairs}
    assert set(by_text) == {("c", "b"), ("c", "d"), ("c", "a"), ("b", "a"), ("d", "a"), ("yes", "no")}
    assert by_text[("c", "a")].distance == 2 and by_text[("c", "a")].where == "prefs.jsonl:1"
    assert {p.group for p in prefs.pairs if p.prompt == "Q?"} == {0}
    assert (prefs.ties[0].first, prefs.ties[0].second) == ("b", "d")


def test_a_malformed_ranking_is_refused_with_file_and_line() -> None:
    bad = {**RANKED, "ranking": "C > B > A"}
    with pytest.raises(BadInput) as caught:
        preferences_of(rows(RANKED, bad))
    assert "prefs.jsonl:2: ranking 'C > B > A': D not ranked" in str(caught.value)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "Q?", "responses": "ab", "ranking": "A > B"}, "'responses' must be a list of texts"),
        ({"prompt": "Q?", "responses": ["a"], "ranking": "A"}, "'responses' has 1 texts"),
        ({"responses": ["a", "b"], "ranking": "A > B"}, "row has no 'prompt'"),
        ({"prompt": "Q?", "responses": ["a", "b"], "ranking": 3}, "'ranking' must be a text"),
        ({"prompt": "P?", "chosen": "same", "rejected": "same"}, "'chosen' and 'rejected' are the same text"),
    ],
)
def test_bad_preference_rows_are_named(row: dict, reason: str) -> None:
    with pytest.raises(BadInput) as caught:
        preferences_of(rows(PAIR, row))
    assert f"prefs.jsonl:2: {reason}" in str(caught.value)


def test_skip_bad_rows_counts_them_and_keeps_the_rest() -> None:
    prefs = preferences_of(rows(RANKED, {**RANKED, "ranking": "A > Z"}, PAIR), skip_bad_rows=True)
    assert prefs.skipped == 1
    assert len(prefs.pairs) == 6


def test_only_unranked_rows_is_a_clear_refusal() -> None:
    with pytest.raises(BadInput) as caught:
        preferences_of(rows(UNRANKED, UNRANKED), key="data.train")
    assert "no preference pairs in data.train (2 not ranked yet)" in str(caught.value)
    assert "llmtune rank" in str(caught.value)


def test_graded_rows_take_a_rankings_best_tier_as_good_and_worst_as_bad() -> None:
    graded = graded_of(rows(RANKED, UNRANKED)).rows
    assert sorted((g.completion, g.good) for g in graded) == [("a", False), ("c", True)]
    assert all(g.where == "prefs.jsonl:1" for g in graded)


def test_graded_rows_read_explicit_labels_and_refuse_an_unknown_one() -> None:
    labelled = [
        {"prompt": "Q?", "completion": t, "label": v} for t, v in [("a", True), ("b", "bad"), ("c", 1)]
    ]
    assert [g.good for g in graded_of(rows(*labelled)).rows] == [True, False, True]
    with pytest.raises(BadInput) as caught:
        graded_of(rows(*labelled, {"prompt": "Q?", "completion": "d", "label": "maybe"}))
    assert "prefs.jsonl:4: 'label' 'maybe' is not good or bad" in str(caught.value)
    assert graded_of(
        rows(*labelled, {"prompt": "Q?", "completion": "d", "label": "maybe"}), skip_bad_rows=True
    ).rows


def test_graded_rows_need_both_good_and_bad() -> None:
    with pytest.raises(BadInput, match="both good and bad"):
        graded_of(rows({"prompt": "Q?", "completion": "a", "label": True}))
