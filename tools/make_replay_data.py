"""Write data/replay/: the data of the replay demo (recipes/finetune-replay-*.yaml).

- general_train.jsonl / general_test.jsonl: plain English sentences ("text"), the "general
  knowledge" a small model first learns (recipes/finetune-replay-general.yaml);
- task_train.jsonl / task_test.jsonl: a narrow task with nothing in common with it, two-digit
  sums as prompt/completion ("12 + 7 =" -> " 19"), which the off/on recipes fine-tune on while
  evaluation.retain measures the general test sentences before and after.

Sentences are composed from word lists written here, with a fixed seed, so the files are
reproducible; train and test share no row.

    python tools/make_replay_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "replay"

PEOPLE = [
    "the farmer",
    "my sister",
    "a tired nurse",
    "the old baker",
    "our neighbour",
    "the teacher",
    "a young pilot",
    "the gardener",
    "his uncle",
    "the night guard",
    "a quiet student",
    "the mayor",
]
VERBS = [
    "carried",
    "painted",
    "found",
    "sold",
    "fixed",
    "borrowed",
    "cleaned",
    "opened",
    "dropped",
    "watched",
    "counted",
    "wrapped",
]
THINGS = [
    "a wooden chair",
    "the blue door",
    "an empty basket",
    "three apples",
    "the kitchen window",
    "a heavy letter",
    "the garden gate",
    "two warm loaves",
    "a broken clock",
    "the red bicycle",
    "an old map",
    "the silver kettle",
]
PLACES = [
    "before breakfast",
    "near the river",
    "in the rain",
    "after school",
    "by the market",
    "at the station",
    "under the bridge",
    "on sunday morning",
    "behind the church",
    "late at night",
]
ENDINGS = [
    "and smiled.",
    "and went home.",
    "without a word.",
    "for the first time.",
    "and sat down.",
    "while the dog slept.",
    "as the bells rang.",
    "and forgot about it.",
]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(part) for part in (PEOPLE, VERBS, THINGS, PLACES, ENDINGS)).capitalize()


def general(rng: random.Random, n: int) -> list[dict[str, str]]:
    seen: set[str] = set()
    while len(seen) < n:
        seen.add(sentence(rng))
    return [{"text": text} for text in sorted(seen, key=lambda _: rng.random())]


def sums() -> list[dict[str, str]]:
    return [
        {"prompt": f"{a} + {b} =", "completion": f" {a + b}"} for a in range(10, 60) for b in range(1, 21)
    ]


def write(name: str, rows: list[dict[str, str]]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{OUT / name}: {len(rows)} rows")


def main() -> None:
    rng = random.Random(11)
    text = general(rng, 2200)
    write("general_train.jsonl", text[:2000])
    write("general_test.jsonl", text[2000:])
    task = sums()
    rng.shuffle(task)
    write("task_train.jsonl", task[:900])
    write("task_test.jsonl", task[900:])


if __name__ == "__main__":
    main()
