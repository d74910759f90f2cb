"""The rule that draws an epoch's training rows from several sources: a weighted mixture (several
tasks in one run) and replay of general rows against catastrophic forgetting. The sources are
read by `llmtune.data.readers.load_splits`; this module only decides which rows an epoch holds.

What one epoch holds:
- each source is read with its own columns; `data.split` carves validation and test rows from
  every source apart, so that held-out rows keep their source (per-source losses); validation
  or test files given in `data` are used as they are;
- N task rows, N = the training rows of all sources together, each drawn from source i with
  probability weight_i / sum(weights) (numpy's multinomial). A source drawn more often than it
  has rows repeats them, each pass in a fresh order; one drawn less gives a random subset;
- replay adds round(N * ratio / (1 - ratio)) general rows, so that they make `ratio` of the epoch;
- the draw is made once per run, seeded by the recipe's seed, and every epoch trains on it in a
  new order (the Trainer shuffles): reruns and --resume see the same rows.

Each row carries its source's name under `SOURCE`, so that whatever filters the rows later
(limits, label checks) keeps it, and the report can give rows and losses per source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmtune.recipes.common import Data
from llmtune.recipes.finetune import FinetuneData, Source

SOURCE = "_source"
REPLAY = "replay"


@dataclass
class Pool:
    """One source's training rows (how many), and its share of an epoch."""

    name: str
    size: int
    weight: float | None = None  # a task source's sampling weight
    ratio: float | None = None  # replay: share of the epoch


def is_composite(data: Data) -> bool:
    """Whether the rows are a mixture of sources or include replay."""
    return isinstance(data, FinetuneData) and data.is_composite()


def task_sources(data: FinetuneData) -> list[tuple[str, Source]]:
    """(recipe key, source) of every task source; a plain train is one source named `train`."""
    if data.is_mixture():
        return [(f"data.train[{i}]", source) for i, source in enumerate(data.train)]  # type: ignore[arg-type]
    return [("data.train", Source(path=data.train, name="train"))]  # type: ignore[arg-type]


def templates(data: FinetuneData) -> dict[str, str | None]:
    """Source name -> the template its rows use (its own, else data.template)."""
    out = {source.label(): source.template or data.template for _, source in task_sources(data)}
    if data.replay is not None:
        out[REPLAY] = data.replay.template or data.template
    return out


def template_key(key: str) -> str:
    """The recipe key of the template that renders the rows read under `key`."""
    if key.startswith("data.train["):
        return f"{key}.template"
    return "data.replay.template" if key.startswith("data.replay") else "data.template"


def tag(rows: list[dict[str, Any]], name: str) -> None:
    """Mark each row with its source."""
    for row in rows:
        row[SOURCE] = name


def draw(pools: list[Pool], seed: int) -> list[tuple[int, int]]:
    """The epoch's rows as (pool, row) positions in a random order: N task rows drawn by weight,
    plus replay at its ratio (see the module's docstring)."""
    import numpy

    rng = numpy.random.default_rng(seed)
    tasks = [p for p in pools if p.ratio is None]
    n = sum(p.size for p in tasks)
    weights = numpy.array([p.weight for p in tasks], dtype=float)
    counts = iter(rng.multinomial(n, weights / weights.sum()).tolist())
    chosen = []
    for index, pool in enumerate(pools):
        count = next(counts) if pool.ratio is None else round(n * pool.ratio / (1 - pool.ratio))
        chosen += [(index, row) for row in _take(pool.size, count, rng)]
    return [chosen[i] for i in rng.permutation(len(chosen)).tolist()]


def _take(size: int, count: int, rng: Any) -> list[int]:
    """`count` indices of a pool of `size`: whole passes in a fresh order each, then part of one."""
    out: list[int] = []
    while len(out) < count:
        out += rng.permutation(size).tolist()
    return out[:count]


def source_table(pools: list[Pool]) -> dict[str, dict[str, Any]]:
    """Per source: its normalised weight (or replay ratio) and training rows."""
    total = sum(p.weight or 0 for p in pools)
    return {
        p.name: {
            "weight": None if p.ratio else round((p.weight or 0) / total, 4),
            "ratio": p.ratio,
            "rows": p.size,
        }
        for p in pools
    }


def count_sources(
    sources: dict[str, dict[str, Any]], train: list[dict[str, Any]], held: dict[str, list[dict[str, Any]]]
) -> None:
    """Add to `sources` the rows drawn per source (after data.limit), their share of the epoch, and
    each source's held-out rows."""
    drawn = dict.fromkeys(sources, 0)
    for row in train:
        drawn[row[SOURCE]] += 1
    for name, entry in sources.items():
        entry.update(drawn=drawn[name], share=round(drawn[name] / max(len(train), 1), 4))
        for split, rows in held.items():
            entry[split] = sum(r.get(SOURCE) == name for r in rows)
