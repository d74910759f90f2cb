"""The rule that draws an epoch's training rows from several sources: a weighted mixture (several
tasks in one run) and replay of general rows against catastrophic forgetting. The sources are
read here, source by source, when `llmtune.data.splits.load_splits` meets a mixture or replay.

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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.data.readers import SPLIT_NAMES, Rows, Splits, carve_missing, read_rows
from llmtune.data.templates import Template
from llmtune.errors import BadInput
from llmtune.recipes.common import Data, RecipeBase
from llmtune.recipes.sources import MixtureData

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
    return isinstance(data, MixtureData) and data.is_composite()


def templates(data: MixtureData) -> dict[str, str | None]:
    """Source name -> the template its rows use (its own, else data.template)."""
    out = {source.label(): source.template or data.template for _, source in data.task_sources()}
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


def read_mixture(
    recipe: RecipeBase,
    data: MixtureData,
    required: tuple[str, ...],
    label_field: str | None,
    render_into: str | None,
) -> Splits:
    """Each source read with its columns (and template), held-out rows carved from each, and the
    epoch's training rows drawn by the mixture's rule."""
    reader = SourceReader(recipe, data, required, render_into)
    held = {name: Rows() for name in SPLIT_NAMES}
    pools: list[tuple[Pool, Rows]] = []
    for key, source in data.task_sources():
        rows = reader.read(key, source.path, source.columns, source.template or data.template)
        tag(rows.rows, source.label())
        rows = carve_missing(rows, held, data, label_field, key)
        pools.append((Pool(source.label(), len(rows), weight=source.weight), rows))
    for name in ("validation", "test"):
        if getattr(data, name) is not None:
            held[name] = reader.read(f"data.{name}", getattr(data, name), None, data.template)
        elif data.split and getattr(data.split, name) and not held[name].rows:
            raise BadInput(
                f"holds out no row: every source is too small; give data.{name}", key=f"data.split.{name}"
            )
    if data.replay is not None:
        replay = data.replay
        rows = reader.read("data.replay.path", replay.path, replay.columns, replay.template or data.template)
        tag(rows.rows, REPLAY)
        pools.append((Pool(REPLAY, len(rows), ratio=replay.ratio), rows))
    order = draw([pool for pool, _ in pools], recipe.seed)
    picked = [(pools[p][1], i) for p, i in order]
    train = Rows(
        [r.rows[i] for r, i in picked], [r.where[i] for r, i in picked], sum(r.skipped for _, r in pools)
    )
    splits = Splits(train, held["validation"], held["test"], reader.files, data.skip_bad_rows)
    splits.sources = source_table([pool for pool, _ in pools])
    return splits


@dataclass
class SourceReader:
    """Reads every source of one recipe alike (bad-row policy, required fields, rendering of the
    model input into `render_into`), and collects the files read."""

    recipe: RecipeBase
    data: Data
    required: tuple[str, ...]
    render_into: str | None
    files: list[Path] = field(default_factory=list)

    def read(
        self, key: str, spec: str | list[str], columns: dict[str, str] | None, template: str | None
    ) -> Rows:
        """One source's rows with its columns (default data.columns); with `render_into`, its model
        input rendered there by `template` (which then makes that field: it is not required)."""
        field_name = self.render_into if template is not None else None
        needed = tuple(f for f in self.required if f != field_name)
        columns = self.data.columns if columns is None else columns
        skip = self.data.skip_bad_rows
        rows, used = read_rows(self.recipe, spec, key, columns=columns, required=needed, skip_bad_rows=skip)
        self.files.extend(used)
        if field_name is not None and template is not None:
            compiled = Template(template, where=template_key(key))
            compiled.check_fields(set(rows.rows[0]), file=rows.where[0].rsplit(":", 1)[0])
            for row, where in zip(rows.rows, rows.where):
                row[field_name] = compiled.render(row, where=where)
        return rows
