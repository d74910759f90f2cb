"""Write data/ratings/{train,test}.jsonl: product reviews with a 1-5 star rating, for the
`task: regression` recipe (recipes/finetune-regression.yaml).

The reviews are composed by this script from hand-written phrases (openers, remarks on a
product's aspects, closers), each phrase written for a star level, so a review's wording carries
its rating the way real reviews do: mixed reviews (3 stars) praise one thing and fault another,
4 stars has a small complaint, 1 star reads like a return request. Categories differ in products
and aspects, so `evaluation.slices: [category]` has something to compare. Seeded: the same files
every run.

    python tools/make_ratings_data.py            # writes data/ratings/ (400 train, 120 test rows)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PRODUCTS = {
    "kitchen": ["kettle", "frying pan", "blender", "knife set", "coffee grinder", "toaster", "rice cooker"],
    "electronics": ["headphones", "phone charger", "bluetooth speaker", "webcam", "keyboard", "smartwatch"],
    "books": ["novel", "cookbook", "travel guide", "biography", "children's book", "history book"],
    "garden": ["hose", "pruning shears", "lawn mower", "planter", "garden chair", "watering can"],
    "clothing": ["rain jacket", "pair of jeans", "wool sweater", "pair of running shoes", "winter coat"],
}
ASPECTS = {
    "kitchen": ["heats up", "cleans up", "handles", "feels in the hand", "keeps an edge"],
    "electronics": ["sounds", "charges", "connects", "holds a charge", "responds"],
    "books": ["reads", "is written", "keeps you turning pages", "explains things", "is edited"],
    "garden": ["copes with the weather", "cuts", "holds up outdoors", "sprays", "stays together"],
    "clothing": ["fits", "keeps out the rain", "washes", "keeps me warm", "wears in"],
}
OPENERS = {
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
}
GOOD = [
    "It {a} beautifully.",
    "It {a} better than my old one.",
    "It {a} exactly as described.",
    "It {a} really well.",
]
BAD = [
    "It {a} terribly.",
    "It {a} worse than the cheap one it replaced.",
    "It barely {a} at all.",
    "It {a} poorly and it shows.",
]
MEH = ["It {a} well enough.", "It {a} about as you'd expect.", "It {a} fine, most days."]
CLOSERS = {
    1: ["Asked for a refund.", "Avoid.", "Broke within a week.", "Going straight back."],
    2: ["Probably won't buy from them again.", "Wouldn't recommend it.", "Meh, at best."],
    3: ["Might keep it, might not.", "It's fine.", "You get what you pay for.", ""],
    4: ["Recommended.", "Good value.", "Would recommend with that caveat.", ""],
    5: ["Buy it!", "Worth every penny.", "Telling all my friends.", "Ordered a second one."],
}
# which aspect remarks a review of each star level makes (mixed levels mix them)
REMARKS = {1: [BAD, BAD], 2: [BAD, MEH], 3: [GOOD, BAD], 4: [GOOD, MEH], 5: [GOOD, GOOD]}


def review(rng: random.Random, stars: int, category: str) -> str:
    """One review of a product of `category` that reads like `stars` stars."""
    product = rng.choice(PRODUCTS[category])
    aspects = rng.sample(ASPECTS[category], 2)
    remarks = [rng.choice(bank).format(a=a) for bank, a in zip(REMARKS[stars], aspects)]
    rng.shuffle(remarks)
    parts = [rng.choice(OPENERS[stars]).format(p=product), *remarks[: rng.choice([1, 2, 2])]]
    parts.append(rng.choice(CLOSERS[stars]))
    return " ".join(p for p in parts if p)


def rows(rng: random.Random, n: int, prefix: str) -> list[dict]:
    out = []
    for i in range(n):
        stars = rng.choices([1, 2, 3, 4, 5], weights=[2, 2, 3, 4, 4])[0]  # as on shops: more praise
        category = rng.choice(sorted(PRODUCTS))
        out.append(
            {
                "id": f"{prefix}-{i + 1:04d}",
                "review": review(rng, stars, category),
                "rating": stars,
                "category": category,
            }
        )
    return out


def main() -> None:
    rng = random.Random(11)
    folder = ROOT / "data" / "ratings"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", 400), ("test", 120)):
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(rng, n, name))
        (folder / f"{name}.jsonl").write_text(lines, encoding="utf-8")
        print(f"wrote {n} rows to {folder / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
