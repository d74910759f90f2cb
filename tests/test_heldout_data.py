"""Held-out means held out: no text of a shipped test split is in its training split, verbatim or
nearly (the same run of 8 words, after lowercasing and dropping punctuation). A test text is a
near-duplicate when at least a quarter (NEAR_SHARE) of its 8-word runs occur in some training text; a text of
fewer than 8 words counts as one run of its own length (4 words at least; shorter texts are
compared whole). Cheap: reads the files, loads no model.

The data on main before the held-out split failed this: 122 of 202 distinct prefs test answers
(58 verbatim), 10 of 38 prompts, 45 of 120 ratings reviews. data/sentiment passes. data/replay's general sentences are composed from five short word lists, so they are checked
verbatim only (see docs/results.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import make_prefs_data as prefs
import make_ratings_data as ratings_data
import pytest
from conftest import ROOT, read_jsonl

N = 8
NEAR_SHARE = 0.25
SHORTEST_RUN = 4


def words(text: str) -> tuple[str, ...]:
    """Lowercased words, punctuation dropped."""
    return tuple(re.findall(r"[a-z0-9]+", text.lower()))


def runs(text: str, n: int) -> list[tuple[str, ...]]:
    w = words(text)
    return [w[i : i + n] for i in range(len(w) - n + 1)]


def near_duplicates(train: Iterable[str], test: Iterable[str]) -> list[tuple[str, float]]:
    """Every test text that is a training text (normalised) or shares at least NEAR_SHARE of its
    N-word runs (shorter texts: one run of their own length) with the training texts, with that
    share."""
    train = list(train)
    whole = {words(t) for t in train}
    seen: dict[int, set[tuple[str, ...]]] = {}
    found = []
    for text in dict.fromkeys(test):
        w = words(text)
        if w in whole:
            found.append((text, 1.0))
            continue
        n = min(N, len(w))
        if n < SHORTEST_RUN:
            continue
        if n not in seen:
            seen[n] = {r for t in train for r in runs(t, n)}
        mine = runs(text, n)
        share = sum(r in seen[n] for r in mine) / len(mine)
        if share >= NEAR_SHARE:
            found.append((text, share))
    return found


def texts(folder: Path, name: str, *keys: str) -> list[str]:
    """Every string under `keys` (a list is read item by item) of folder/name."""
    out = []
    for row in read_jsonl(folder / name):
        for key in keys:
            value = row.get(key)
            if value is not None:
                out.extend(value if isinstance(value, list) else [value])
    return out


def prefs_answers(data: Path) -> tuple[list[str], list[str]]:
    p = data / "prefs"
    train = texts(p, "rankings_train.jsonl", "responses") + texts(p, "sft_train.jsonl", "completion")
    train += texts(p, "kto_train.jsonl", "completion")
    return train, texts(p, "rankings_test.jsonl", "responses") + texts(p, "sft_test.jsonl", "completion")


def prefs_prompts(data: Path) -> tuple[list[str], list[str]]:
    p = data / "prefs"
    train = texts(p, "prompts_train.jsonl", "prompt") + texts(p, "sft_train.jsonl", "prompt")
    return train, texts(p, "prompts_test.jsonl", "prompt") + texts(p, "rankings_test.jsonl", "prompt")


def ratings(data: Path) -> tuple[list[str], list[str]]:
    return texts(data / "ratings", "train.jsonl", "review"), texts(data / "ratings", "test.jsonl", "review")


def sentiment(data: Path) -> tuple[list[str], list[str]]:
    s = data / "sentiment"
    train = texts(s, "train.jsonl", "review") + texts(s, "transfer.jsonl", "review")
    return train, texts(s, "test.jsonl", "review")


SPLITS: dict[str, Callable[[Path], tuple[list[str], list[str]]]] = {
    "prefs answers (rankings, sft, kto)": prefs_answers,
    "prefs prompts": prefs_prompts,
    "ratings reviews": ratings,
    "sentiment reviews (test vs train + transfer)": sentiment,
}


@pytest.mark.parametrize("name", list(SPLITS))
def test_no_test_text_is_a_near_duplicate_of_a_training_text(name: str) -> None:
    train, test = SPLITS[name](ROOT / "data")
    assert train and test
    found = near_duplicates(train, test)
    assert not found, f"{name}: {len(found)} of {len(set(test))} test texts leak, e.g. {found[:3]}"


def test_replay_splits_share_no_row() -> None:
    """The replay data's general sentences share word runs by design (five word lists; the
    retain metric measures forgetting of that language, not held-out generalisation); no sentence
    and no sum is in both splits."""
    r = ROOT / "data" / "replay"
    general = set(texts(r, "general_train.jsonl", "text")) & set(texts(r, "general_test.jsonl", "text"))
    sums = set(texts(r, "task_train.jsonl", "prompt")) & set(texts(r, "task_test.jsonl", "prompt"))
    assert not general and not sums


def test_the_generators_phrasings_of_train_and_test_are_disjoint() -> None:
    """Held out by phrasing at the source: no opener, sign-off, evasion, insult, product, remark
    or closer is in both parts of its list (an empty opener or closer aside)."""
    pools = [(prefs.PHRASES["train"][k], prefs.PHRASES["test"][k]) for k in prefs.PHRASES["train"]]
    pools += [(ratings_data.OPENERS["train"][s], ratings_data.OPENERS["test"][s]) for s in range(1, 6)]
    pools += [(ratings_data.CLOSERS["train"][s], ratings_data.CLOSERS["test"][s]) for s in range(1, 6)]
    for bank in ("good", "bad", "meh"):
        pools.append((ratings_data.REMARK_BANKS["train"][bank], ratings_data.REMARK_BANKS["test"][bank]))
    for category in ratings_data.ASPECTS:
        pools.append((ratings_data.PRODUCTS["train"][category], ratings_data.PRODUCTS["test"][category]))
    for train, test in pools:
        assert not (set(train) & set(test)) - {""}, (train, test)


def test_the_shipped_ratings_are_what_the_generator_writes(tmp_path: Path) -> None:
    tool = ROOT / "tools" / "make_ratings_data.py"
    subprocess.run([sys.executable, str(tool), "--out", str(tmp_path)], check=True, capture_output=True)
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_bytes() == (ROOT / "data" / "ratings" / name).read_bytes(), name


def test_the_check_finds_a_copied_answer_and_a_reworded_one() -> None:
    """The check itself: a verbatim copy (case and punctuation aside) and a copy with one word
    changed are caught; a text on the same subject in other words is not."""
    train = ["Tap 'Forgot password' on the email sign-in page, then follow the link we send you."]
    test = [
        "tap forgot password on the email sign in page then follow the link we send you",
        "Tap 'Forgot password' on the email sign-in page, then follow the link we mail you.",
        "Use the reset link on the email login screen.",
        "Not my problem.",
    ]
    found = [text for text, _ in near_duplicates(train + ["Not my problem!"], test)]
    assert found == [test[0], test[1], test[3]]
