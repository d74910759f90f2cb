"""Write data/sentiment/transfer.jsonl: unlabelled reviews for `llmtune distill` to have the teacher
label (the transfer set of recipes/distill-sentiment.yaml).

Three kinds of review, all from text written for llmtune, with a fixed seed (the file is
reproducible):
- composed: parts written here (things reviewed, verdicts that lean positive, negative, lukewarm
  or mixed, details and sign-offs) put together;
- spliced: the opening sentence of one train.jsonl review followed by the rest of another, so that
  reviews whose halves disagree give the teacher borderline cases to score;
- perturbed: a train.jsonl review with some words dropped or only a stretch of it kept (the
  augmentation of Tang et al., 2019, "Distilling Task-Specific Knowledge from BERT into Simple
  Neural Networks"): close to real reviews, and the teacher's scores say how much the missing
  words mattered.
Only train.jsonl is drawn from (never test or inbox). Rows carry no label: the teacher labels
them. Every review is checked to be distinct from each other and from train.jsonl, test.jsonl and
inbox.jsonl (case and spacing ignored).

    python tools/make_transfer_reviews.py [--composed 400] [--spliced 500] [--perturbed 300]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "sentiment"

THINGS = [
    "blender",
    "electric toothbrush",
    "hiking boots",
    "air fryer",
    "office chair",
    "noise-cancelling headphones",
    "rice cooker",
    "garden hose",
    "winter coat",
    "phone case",
    "standing desk",
    "robot vacuum",
    "yoga mat",
    "coffee grinder",
    "kids' scooter",
    "bike lock",
    "laptop bag",
    "desk lamp",
    "board game",
    "paperback thriller",
    "cookbook",
    "travel pillow",
    "steam iron",
    "bluetooth speaker",
    "smartwatch",
    "sofa bed",
    "wool jumper",
    "running shoes",
    "tent",
    "dog harness",
    "cat scratching post",
    "fish tank filter",
    "lawnmower",
    "pizza place on the corner",
    "Thai restaurant",
    "hotel by the station",
    "budget airline",
    "train operator",
    "plumber",
    "electrician",
    "dentist",
    "hair salon",
    "car wash",
    "gym",
    "cinema",
    "museum",
    "bakery",
    "broadband provider",
    "banking app",
    "recipe app",
    "language-learning app",
    "food delivery service",
    "removal company",
    "window cleaner",
    "bed and breakfast",
    "ferry crossing",
    "escape room",
    "bookshop cafe",
    "vet practice",
    "driving instructor",
    "phone repair shop",
    "tyre fitter",
    "holiday cottage",
    "theme park",
]
POSITIVE = [
    "is brilliant and worth every penny",
    "exceeded what I expected by a mile",
    "works perfectly and feels solidly made",
    "made my week a lot easier",
    "is the best purchase I've made this year",
    "was friendly, quick and spotless",
    "is a real pleasure to use every day",
    "does exactly what it promises, no fuss",
    "delivered far more than the price suggests",
    "has been faultless for months now",
    "left me genuinely impressed",
    "is comfortable, sturdy and good looking",
    "sorted everything out in one visit",
    "was a lovely surprise from start to finish",
    "is quiet, fast and easy to clean",
    "got everything right, down to the small details",
    "won over the whole family",
    "felt like excellent value",
    "is well designed and a joy to own",
    "kept its promise and then some",
]
NEGATIVE = [
    "broke within a fortnight",
    "is a complete waste of money",
    "was rude, late and overpriced",
    "stopped working after the first wash",
    "is flimsy and feels cheap in the hand",
    "let us down badly when it mattered",
    "is far too loud to live with",
    "never arrived and nobody answers the phone",
    "made the whole trip miserable",
    "smells of chemicals even after a month",
    "charged me twice and refused a refund",
    "is slow, buggy and crashes constantly",
    "fell apart on the second outing",
    "was dirty and the staff didn't care",
    "is nothing like the photos",
    "left a bigger mess than it fixed",
    "is the most frustrating thing I own",
    "ruined what should have been a nice evening",
    "lasted a week before the battery died",
    "was a disappointment from the moment we arrived",
]
LUKEWARM_POSITIVE = [
    "is not bad at all, honestly",
    "isn't perfect, but I'd buy it again",
    "took a while to grow on me, and now I'm a fan",
    "is a bit pricey, though the quality shows",
    "had a slow start but has been great since",
]
LUKEWARM_NEGATIVE = [
    "is not great, to be honest",
    "looks nice but doesn't really work",
    "was fine at first and went downhill fast",
    "is okay on paper, annoying in practice",
    "wasn't worth the wait or the money",
]
POSITIVE_DETAILS = [
    "Setup took five minutes.",
    "Customer service replied within the hour.",
    "The kids love it.",
    "It arrived a day early, well packed.",
    "Staff remembered our names on the second visit.",
    "Battery easily lasts the week.",
    "Cleaning it is a two-minute job.",
    "Already recommended it to my sister.",
    "The instructions were actually clear.",
    "Price has held up well against the big brands.",
]
NEGATIVE_DETAILS = [
    "Support sent the same canned reply three times.",
    "The replacement had the same fault.",
    "We waited forty minutes for a table we had booked.",
    "The app logs me out every single day.",
    "Half the parts were missing from the box.",
    "The smell in the room never went away.",
    "It overheats if you use it for more than ten minutes.",
    "Returns are only accepted by post, at my cost.",
    "The stitching came loose along one seam.",
    "Nobody turned up for the second appointment.",
]
OPENERS = [
    "",
    "",
    "",
    "Bought this for my dad. ",
    "Second time trying it. ",
    "Quick review: ",
    "After three months: ",
    "Long-time customer here. ",
    "Went on a friend's advice. ",
    "Honest opinion: ",
]
CLOSERS_POSITIVE = ["", "", "Five stars.", "Would happily recommend.", "We'll be back.", "Ten out of ten."]
CLOSERS_NEGATIVE = ["", "", "One star.", "Avoid.", "Never again.", "Returning it tomorrow."]


def compose(rng: random.Random) -> str:
    """One review: opener, thing, verdict, maybe a detail and a sign-off, leaning one way or mixed."""
    thing = rng.choice(THINGS)
    lean = rng.random()
    positive = lean < 0.5
    if lean < 0.15 or 0.5 <= lean < 0.65:
        verdict = rng.choice(LUKEWARM_POSITIVE if positive else LUKEWARM_NEGATIVE)
    else:
        verdict = rng.choice(POSITIVE if positive else NEGATIVE)
    parts = [f"{rng.choice(OPENERS)}The {thing} {verdict}."]
    if rng.random() < 0.7:
        same_side = rng.random() < 0.8  # some reviews mention a detail that cuts the other way
        details = POSITIVE_DETAILS if positive == same_side else NEGATIVE_DETAILS
        parts.append(rng.choice(details))
    closer = rng.choice(CLOSERS_POSITIVE if positive else CLOSERS_NEGATIVE)
    if closer:
        parts.append(closer)
    return " ".join(parts)


def splice(rng: random.Random, sentences: list[list[str]]) -> str:
    """The first sentence of one train review, then the rest of another (both of 2+ sentences)."""
    first, second = rng.sample(sentences, 2)
    return " ".join([first[0], *second[1:]])


def perturb(rng: random.Random, review: str) -> str:
    """A train review with each word dropped at 15%, or only a stretch of 60-90% of its words."""
    words = review.split()
    if rng.random() < 0.5:
        kept = [w for w in words if rng.random() >= 0.15]
        return " ".join(kept or words[:1])
    length = max(3, round(len(words) * rng.uniform(0.6, 0.9)))
    start = rng.randrange(0, max(1, len(words) - length + 1))
    return " ".join(words[start : start + length])


def normalised(text: str) -> str:
    return " ".join(text.casefold().split())


def read_reviews(name: str) -> list[str]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["review"] for line in lines if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--composed", type=int, default=400)
    parser.add_argument("--spliced", type=int, default=500)
    parser.add_argument("--perturbed", type=int, default=300)
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    train = read_reviews("train.jsonl")
    taken = {
        normalised(r) for name in ("train.jsonl", "test.jsonl", "inbox.jsonl") for r in read_reviews(name)
    }
    sentences = [parts for r in train if len(parts := re.split(r"(?<=[.!?])\s+", r.strip())) >= 2]
    rng = random.Random(args.seed)
    makers = [
        (args.composed, lambda: compose(rng)),
        (args.spliced, lambda: splice(rng, sentences)),
        (args.perturbed, lambda: perturb(rng, rng.choice(train))),
    ]
    reviews: list[str] = []
    seen: set[str] = set()
    for count, make in makers:
        made = 0
        while made < count:
            text = make()
            key = normalised(text)
            if key not in seen and key not in taken:
                seen.add(key)
                reviews.append(text)
                made += 1
    rng.shuffle(reviews)  # the kinds mixed, as any file of reviews would be
    out = DATA / "transfer.jsonl"
    lines = [
        json.dumps({"id": f"transfer-{i:04d}", "review": r}, ensure_ascii=False)
        for i, r in enumerate(reviews, 1)
    ]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(reviews)} reviews to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
