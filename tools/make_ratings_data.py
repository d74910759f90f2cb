"""Write data/ratings/{train,test}.jsonl: product reviews with a 1-5 star rating, for the
`task: regression` recipe (recipes/finetune-regression.yaml).

The reviews are composed by this script from hand-written phrases (openers, remarks on a
product's aspects, closers), each phrase written for a star level, so a review's wording carries
its rating the way real reviews do: mixed reviews (3 stars) praise one thing and fault another,
4 stars has a small complaint, 1 star reads like a return request. Categories differ in products
and aspects, so `evaluation.slices: [category]` has something to compare. Seeded: the same files
every run. Held out by phrasing: the test reviews are about other products and use other
openers, remarks and closers than the training reviews (lists in two parts below).

    python tools/make_ratings_data.py [--out data/ratings]   # 400 train, 120 test rows
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Every phrase list comes in two parts, train and held-out (test): a test review never uses a
# product, opener, remark or closer that a training review uses, so the regression recipe is
# measured on reading a review, not on recognising the template its star level was written from.
PRODUCTS = {
    "train": {
        "kitchen": ["kettle", "frying pan", "blender", "knife set", "toaster"],
        "electronics": ["headphones", "phone charger", "bluetooth speaker", "keyboard"],
        "books": ["novel", "cookbook", "biography", "children's book"],
        "garden": ["hose", "pruning shears", "lawn mower", "watering can"],
        "clothing": ["rain jacket", "pair of jeans", "wool sweater"],
    },
    "test": {
        "kitchen": ["coffee grinder", "rice cooker"],
        "electronics": ["webcam", "smartwatch"],
        "books": ["travel guide", "history book"],
        "garden": ["planter", "garden chair"],
        "clothing": ["pair of running shoes", "winter coat"],
    },
}
ASPECTS = {
    "kitchen": ["heats up", "cleans up", "handles", "feels in the hand", "keeps an edge"],
    "electronics": ["sounds", "charges", "connects", "holds a charge", "responds"],
    "books": ["reads", "is written", "keeps you turning pages", "explains things", "is edited"],
    "garden": ["copes with the weather", "cuts", "holds up outdoors", "sprays", "stays together"],
    "clothing": ["fits", "keeps out the rain", "washes", "keeps me warm", "wears in"],
}
OPENERS = {
    "train": {
        1: [
            "Returned the {p} after two days.",
            "Do not buy this {p}.",
            "Worst {p} I have owned.",
            "Honestly a waste of money.",
            "I wanted to like this {p}, but no.",
        ],
        2: [
            "Disappointing {p}.",
            "Expected more from this {p}.",
            "Not great, not a disaster either, mostly not great.",
            "The {p} works, barely.",
            "I regret choosing this {p} over the others.",
        ],
        3: [
            "It's an okay {p}.",
            "Mixed feelings about this {p}.",
            "Average {p}, does the job.",
            "Fine for the price, nothing more.",
            "The {p} is decent but has flaws.",
        ],
        4: [
            "Really good {p}.",
            "Happy with this {p} overall.",
            "Solid {p}, would buy again.",
            "Pleasantly surprised by this {p}.",
            "A very nice {p} with one small gripe.",
        ],
        5: [
            "Absolutely love this {p}!",
            "Best {p} I have ever bought.",
            "Perfect {p}, no complaints at all.",
            "Five stars, easily.",
            "This {p} exceeded every expectation.",
        ],
    },
    "test": {
        1: ["Sent this {p} back the same week.", "Awful {p} from start to finish.", "Total letdown."],
        2: ["Underwhelming {p}, sadly.", "This {p} falls short.", "Two stars is generous."],
        3: ["A middling {p}.", "The {p} is so-so.", "Neither good nor bad, really."],
        4: ["Good {p}, almost great.", "Pretty pleased with the {p}.", "Nearly perfect, just one niggle."],
        5: ["Outstanding {p}!", "Couldn't be happier with this {p}.", "Simply brilliant, top marks."],
    },
}
REMARK_BANKS = {
    "train": {
        "good": [
            "It {a} beautifully.",
            "It {a} better than my old one.",
            "It {a} exactly as described.",
            "It {a} really well.",
        ],
        "bad": [
            "It {a} terribly.",
            "It {a} worse than the cheap one it replaced.",
            "It barely {a} at all.",
            "It {a} poorly and it shows.",
        ],
        "meh": ["It {a} well enough.", "It {a} about as you'd expect.", "It {a} fine, most days."],
    },
    "test": {
        "good": ["Honestly, it {a} superbly.", "I'm impressed by how it {a}.", "Nothing else {a} like it."],
        "bad": ["Sadly, it {a} badly.", "I'm annoyed by how it {a}.", "Nothing I own {a} so poorly."],
        "meh": ["It {a} okay, I suppose.", "How it {a} is passable."],
    },
}
CLOSERS = {
    "train": {
        1: ["Asked for a refund.", "Avoid.", "Broke within a week.", "Going straight back."],
        2: ["Probably won't buy from them again.", "Wouldn't recommend it.", "Meh, at best."],
        3: ["Might keep it, might not.", "It's fine.", "You get what you pay for.", ""],
        4: ["Recommended.", "Good value.", "Would recommend with that caveat.", ""],
        5: ["Buy it!", "Worth every penny.", "Telling all my friends.", "Ordered a second one."],
    },
    "test": {
        1: ["Want my money back.", "Steer clear."],
        2: ["Look elsewhere.", "Not worth it."],
        3: ["Take it or leave it.", ""],
        4: ["Happy enough.", ""],
        5: ["Get one now.", "A delight."],
    },
}
# which aspect remarks a review of each star level makes (mixed levels mix them)
REMARKS = {1: ["bad", "bad"], 2: ["bad", "meh"], 3: ["good", "bad"], 4: ["good", "meh"], 5: ["good", "good"]}


def review(rng: random.Random, split: str, stars: int, category: str) -> str:
    """One review of a product of `category` that reads like `stars` stars, in `split`'s phrases."""
    product = rng.choice(PRODUCTS[split][category])
    aspects = rng.sample(ASPECTS[category], 2)
    banks = REMARK_BANKS[split]
    remarks = [rng.choice(banks[bank]).format(a=a) for bank, a in zip(REMARKS[stars], aspects)]
    rng.shuffle(remarks)
    parts = [rng.choice(OPENERS[split][stars]).format(p=product), *remarks[: rng.choice([1, 2, 2])]]
    parts.append(rng.choice(CLOSERS[split][stars]))
    return " ".join(p for p in parts if p)


def rows(rng: random.Random, n: int, split: str) -> list[dict]:
    out = []
    for i in range(n):
        stars = rng.choices([1, 2, 3, 4, 5], weights=[2, 2, 3, 4, 4])[0]  # as on shops: more praise
        category = rng.choice(sorted(ASPECTS))
        out.append(
            {
                "id": f"{split}-{i + 1:04d}",
                "review": review(rng, split, stars, category),
                "rating": stars,
                "category": category,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "ratings")
    folder = parser.parse_args().out
    rng = random.Random(11)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", 400), ("test", 120)):
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(rng, n, name))
        (folder / f"{name}.jsonl").write_text(lines, encoding="utf-8")
        print(f"wrote {n} rows to {folder / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
