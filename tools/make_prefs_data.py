"""Write data/prefs/: the preference data of the RLHF demo (recipes/rlhf-*.yaml).

Short customer-support and everyday questions, each with 4 or 5 short answers ranked by how good
they are: helpful and polite > helpful but curt > wrong (polite but off the point) = evasive >
rude = garbled (nonsense). Ties are real: two equally good helpful answers, evasive = wrong, rude
= garbled, two rude or two garbled answers. Every
text is composed here, with a fixed seed, from phrase lists written for llmtune (the file is
reproducible byte for byte):
- topics: questions about passwords, orders, refunds, delivery, opening hours, recipes, travel,
  devices, bills, appointments and more, each with a few filled-in variants (the slot) and two
  ways to give the helpful answer;
- a helpful answer is the topic's answer with a courteous opener or sign-off (polite) or bare
  (curt); a wrong answer is another topic's answer, politely put; evasive and rude answers come
  from their own lists; a garbled answer is a helpful one mangled, looping, or babble (what a
  small model writes when it goes wrong, so that a reward model learns it is no answer).
Prompts are `Question: ...\\nAnswer:` and every answer starts with a space, because the reward
model and the policy read prompt + answer as one text. Held out means held out: a fifth of the
topics (all their prompts) are the test split, and test answers use their own openers, sign-offs,
evasions, insults and babble (PHRASES), so no test answer shares a run of words with a training
one (tests/test_heldout_data.py).

Files: rankings_{train,test}.jsonl ({id, prompt, responses, ranking, kinds}),
prompts_{train,test}.jsonl ({id, prompt}), sft_{train,test}.jsonl ({prompt, completion}: a mix of
answer kinds, the starting policy's SFT data), kto_train.jsonl ({prompt, completion, label}).

    python tools/make_prefs_data.py [--out data/prefs] [--seed 13]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from prefs_phrases import PHRASES, TOPICS  # tools/ is on sys.path when this script runs

ROOT = Path(__file__).resolve().parent.parent

# Every phrasing, train and held-out (for readers of the data, such as tests).
POLITE_OPENERS = PHRASES["train"]["polite_openers"] + PHRASES["test"]["polite_openers"]
EVASIVE = PHRASES["train"]["evasive"] + PHRASES["test"]["evasive"]
RUDE = PHRASES["train"]["rude"] + PHRASES["test"]["rude"]

# Answer kinds of one row, and how they tie: tier of each kind (0 best).
TIER = {
    "polite": 0,
    "polite2": 0,
    "curt": 1,
    "wrong": 2,
    "evasive": 2,
    "rude": 3,
    "rude2": 3,
    "garbled": 3,
    "garbled2": 3,
}
LAYOUTS = [
    ["polite", "curt", "evasive", "rude"],
    ["polite", "curt", "wrong", "evasive", "garbled"],
    ["polite", "polite2", "curt", "wrong", "rude"],
    ["polite", "curt", "wrong", "rude", "garbled"],
    ["polite", "curt", "evasive", "wrong"],
    ["polite", "polite2", "curt", "garbled"],
    ["polite", "curt", "wrong", "rude"],
    ["polite", "curt", "evasive", "garbled"],
    ["polite", "curt", "wrong", "garbled", "garbled2"],
]
# The starting policy's answers, 5 per training prompt drawn from these without replacement: about
# 30% polite, 30% curt, the rest evasive, rude or wrong (never garbled: the policy does that alone).
SFT_KINDS = ["polite", "polite", "curt", "curt", "evasive", "rude", "wrong"]
TEST_SHARE = 0.2


def prompts(rng: random.Random, topics: list[int]) -> list[tuple[int, str, str]]:
    """(topic, slot, question) for every slot value of `topics`: one prompt each."""
    out = []
    for t in topics:
        questions, _, slots = TOPICS[t]
        for slot in slots:
            out.append((t, slot, rng.choice(questions).format(x=slot)))
    return out


def sentence(text: str) -> str:
    return text[0].upper() + text[1:]


class Writer:
    """Composes the answers of one split, from that split's topics and phrasings only."""

    def __init__(self, rng: random.Random, split: str, topics: list[int]) -> None:
        self.rng = rng
        self.phrases = PHRASES[split]
        self.topics = topics

    def pick(self, pool: str) -> str:
        return self.rng.choice(self.phrases[pool])

    def polite(self, core: str) -> str:
        """Courteous opener, the answer, and a sign-off where it stays short (about 70
        characters at most, so that a tiny byte-level policy can write it)."""
        opener = self.pick("polite_openers")
        if len(opener + core) > 70:
            opener = min(self.phrases["polite_openers"], key=len)
        closer = self.pick("polite_closers")
        text = opener + sentence(core)
        return text + closer if len(text + closer) <= 70 else text

    def curt(self, core: str) -> str:
        opener = self.pick("curt_openers")
        text = opener + (core[0].lower() + core[1:] if opener else core)
        return text.rstrip(".") if self.rng.random() < 0.4 else text

    def wrong(self, topic: int) -> str:
        """Another topic's answer (of this split), politely put: courteous, and no use here."""
        other = self.rng.choice([t for t in self.topics if t != topic])
        _, answers, slots = TOPICS[other]
        return self.polite(self.rng.choice(answers).format(x=self.rng.choice(slots)))

    def garbled(self, core: str) -> str:
        """Nonsense of the kind a small model writes when it goes wrong: a helpful answer with its
        words mangled, stuck in a loop, or babble. Ranked with the rude answers, at the bottom, so
        that a reward model learns that fluent-looking noise is no answer."""
        rng = self.rng
        how = rng.choice(["mangle", "loop", "babble"])
        words = sentence(core).split()
        if how == "mangle":
            out = []
            for word in words:
                if len(word) > 2 and rng.random() < 0.6:
                    letters = list(word)
                    rng.shuffle(letters)
                    word = "".join(letters[: rng.randint(2, len(letters))])
                out.append(word)
            text = " ".join(out)
        elif how == "loop":
            start = rng.randint(1, min(3, len(words)))
            text = " ".join(words[:start] + words[start - 1 : start + 1] * 6)
        else:
            count = rng.randint(6, 12)
            syllables = self.phrases["syllables"]
            text = " ".join("".join(rng.sample(syllables, rng.randint(1, 2))) for _ in range(count))
            text = self.pick("polite_openers") + text + "."
        return text[:70].rstrip()

    def answer(self, kind: str, topic: int, cores: list[str]) -> str:
        if kind == "polite":
            return self.polite(cores[0])
        if kind == "polite2":
            return self.polite(cores[1])
        if kind == "curt":
            return self.curt(self.rng.choice(cores))
        if kind == "wrong":
            return self.wrong(topic)
        if kind.startswith("garbled"):
            return self.garbled(self.rng.choice(cores))
        return self.pick("evasive" if kind == "evasive" else "rude")

    def ranking_row(self, ident: str, topic: int, slot: str, question: str) -> dict:
        rng = self.rng
        cores = [a.format(x=slot) for a in TOPICS[topic][1]]
        rng.shuffle(cores)
        kinds = list(rng.choice(LAYOUTS))
        texts: list[str] = []
        for kind in kinds:
            text = self.answer(kind, topic, cores)
            while text in texts:  # two rude (or wrong) answers must differ
                text = self.answer(kind, topic, cores)
            texts.append(text)
        order = list(range(len(kinds)))
        rng.shuffle(order)  # letters say nothing about quality
        kinds = [kinds[i].rstrip("2") for i in order]  # polite2 is polite, etc.
        texts = [texts[i] for i in order]
        letters = "ABCDE"[: len(kinds)]
        tiers: dict[int, list[str]] = {}
        for letter, kind in zip(letters, kinds):
            tiers.setdefault(TIER[kind], []).append(letter)
        ranking = " > ".join(" = ".join(tiers[t]) for t in sorted(tiers))
        prompt = f"Question: {question}\nAnswer:"
        return {
            "id": ident,
            "prompt": prompt,
            "responses": [" " + t for t in texts],
            "ranking": ranking,
            "kinds": kinds,
        }

    def sft_rows(self, items: list[tuple[int, str, str]], per_prompt: int) -> list[dict]:
        out = []
        for topic, slot, question in items:
            cores = [a.format(x=slot) for a in TOPICS[topic][1]]
            for kind in self.rng.sample(SFT_KINDS, per_prompt):
                text = self.answer(kind, topic, cores)
                out.append({"prompt": f"Question: {question}\nAnswer:", "completion": " " + text})
        self.rng.shuffle(out)
        return out


def kto_rows(rankings: list[dict]) -> list[dict]:
    """Best tier good, worst tier bad (the middle tiers are not used)."""
    out = []
    for row in rankings:
        tiers = [t.split(" = ") for t in row["ranking"].split(" > ")]
        for label, tier in ((True, tiers[0]), (False, tiers[-1])):
            for letter in tier:
                completion = row["responses"]["ABCDE".index(letter)]
                out.append({"prompt": row["prompt"], "completion": completion, "label": label})
    return out


def write(path: Path, rows: list[dict]) -> None:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "prefs")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    sft_rng = random.Random(f"{args.seed}-sft")  # its own draws: SFT data never shifts the rankings
    topics = list(range(len(TOPICS)))
    rng.shuffle(topics)
    cut = round(len(topics) * TEST_SHARE)
    held_out = {"test": sorted(topics[:cut]), "train": sorted(topics[cut:])}
    args.out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("test", "train"):
        chosen = prompts(rng, held_out[split])
        rng.shuffle(chosen)
        counts[split] = len(chosen)
        writer, sft = Writer(rng, split, held_out[split]), Writer(sft_rng, split, held_out[split])
        rows = [writer.ranking_row(f"{split}-{i + 1:04d}", *item) for i, item in enumerate(chosen)]
        write(args.out / f"rankings_{split}.jsonl", rows)
        write(args.out / f"prompts_{split}.jsonl", [{"id": r["id"], "prompt": r["prompt"]} for r in rows])
        write(args.out / f"sft_{split}.jsonl", sft.sft_rows(chosen, 5 if split == "train" else 2))
        if split == "train":
            write(args.out / "kto_train.jsonl", kto_rows(rows))
    print(f"wrote {args.out}: {counts['train']} train and {counts['test']} held-out prompts")


if __name__ == "__main__":
    main()
