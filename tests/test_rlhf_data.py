"""The shipped preference data (data/prefs/, the RLHF demo's): enough prompts, rankings that parse
and rank every answer, real ties, a clean train/held-out split, and a generator that writes the
same bytes again. Cheap: no model is loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, read_jsonl
from make_prefs_data import EVASIVE, POLITE_OPENERS, RUDE

from llmtune.data.rankings import parse_ranking

PREFS = ROOT / "data" / "prefs"
FILES = [
    "rankings_train.jsonl",
    "rankings_test.jsonl",
    "prompts_train.jsonl",
    "prompts_test.jsonl",
    "sft_train.jsonl",
    "sft_test.jsonl",
    "kto_train.jsonl",
]


def rankings(split: str) -> list[dict]:
    return read_jsonl(PREFS / f"rankings_{split}.jsonl")


def test_at_least_150_prompts_each_with_4_or_5_answers() -> None:
    rows = rankings("train") + rankings("test")
    assert len(rows) >= 150
    assert len(rankings("test")) >= 30
    assert all(4 <= len(r["responses"]) <= 5 for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)


def test_prompts_and_answers_are_shaped_for_prompt_plus_answer_reading() -> None:
    for row in rankings("train") + rankings("test"):
        assert row["prompt"].startswith("Question: ") and row["prompt"].endswith("\nAnswer:")
        assert len(set(row["responses"])) == len(row["responses"]), row["id"]
        for text in row["responses"]:
            assert text.startswith(" ") and not text.startswith("  "), (row["id"], text)
            assert 10 <= len(text) <= 80, (row["id"], text)


def test_every_ranking_parses_and_ranks_every_answer() -> None:
    for row in rankings("train") + rankings("test"):
        ranking = parse_ranking(row["ranking"], len(row["responses"]))
        placed = sorted(letter for tier in ranking.tiers for letter in tier)
        assert placed == [chr(ord("A") + i) for i in range(len(row["responses"]))], row["id"]
        assert len(ranking.tiers) >= 3, row["id"]


def test_at_least_a_quarter_of_rows_have_a_tie() -> None:
    rows = rankings("train") + rankings("test")
    tied = [r for r in rows if parse_ranking(r["ranking"], len(r["responses"])).ties()]
    assert len(tied) >= len(rows) / 4
    assert any(parse_ranking(r["ranking"], len(r["responses"])).ties() for r in rankings("test"))


def test_the_best_tier_is_never_rude_and_the_order_follows_the_kinds() -> None:
    order = {"polite": 0, "curt": 1, "wrong": 2, "evasive": 2, "rude": 3, "garbled": 3}
    for row in rankings("train") + rankings("test"):
        kinds = dict(zip("ABCDE", row["kinds"]))
        ranking = parse_ranking(row["ranking"], len(row["responses"]))
        assert "rude" not in {kinds[x] for x in ranking.best()}, row["id"]
        assert {kinds[x] for x in ranking.best()} == {"polite"}, row["id"]
        for pair in ranking.pairs():
            assert order[kinds[pair.better]] < order[kinds[pair.worse]], (row["id"], pair)
        for first, second in ranking.ties():
            assert order[kinds[first]] == order[kinds[second]], (row["id"], first, second)


def test_letters_say_nothing_about_quality() -> None:
    """The best answer is not always in one position: every letter A-D is best somewhere."""
    rows = rankings("train") + rankings("test")
    firsts = {parse_ranking(r["ranking"], len(r["responses"])).best()[0] for r in rows}
    assert {"A", "B", "C", "D"} <= firsts


def test_no_prompt_is_in_both_train_and_test() -> None:
    train = {r["prompt"] for r in rankings("train")}
    test = {r["prompt"] for r in rankings("test")}
    assert len(train) == len(rankings("train")) and len(test) == len(rankings("test"))
    assert not train & test


@pytest.mark.parametrize("split", ["train", "test"])
def test_prompt_files_hold_the_rankings_prompts(split: str) -> None:
    prompts = read_jsonl(PREFS / f"prompts_{split}.jsonl")
    assert [(p["id"], p["prompt"]) for p in prompts] == [(r["id"], r["prompt"]) for r in rankings(split)]


@pytest.mark.parametrize("split", ["train", "test"])
def test_sft_rows_come_from_their_own_split_and_mix_answer_kinds(split: str) -> None:
    own = {r["prompt"] for r in rankings(split)}
    rows = read_jsonl(PREFS / f"sft_{split}.jsonl")
    assert rows and all(r["prompt"] in own for r in rows)
    assert all(r["completion"].startswith(" ") for r in rows)
    completions = [r["completion"][1:] for r in rows]
    polite = [c for c in completions if c.startswith(tuple(POLITE_OPENERS))]
    assert 0.2 <= len(polite) / len(rows) <= 0.6, "polite answers should be a share, not all"
    assert any(c in RUDE for c in completions) and any(c in EVASIVE for c in completions)


def test_kto_rows_are_train_prompts_with_good_and_bad_answers() -> None:
    rows = read_jsonl(PREFS / "kto_train.jsonl")
    train = {r["prompt"] for r in rankings("train")}
    assert all(r["prompt"] in train for r in rows)
    assert {r["label"] for r in rows} == {True, False}


def test_the_generator_writes_the_same_bytes_again(tmp_path: Path) -> None:
    out = tmp_path / "prefs"
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_prefs_data.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    for name in FILES:
        assert (out / name).read_bytes() == (PREFS / name).read_bytes(), name
