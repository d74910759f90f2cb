"""Training rows drawn from several sources: a weighted mixture (several tasks in one run) and
replay of general rows against catastrophic forgetting; and the general rows that measure the
forgetting (evaluation.retain).

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
from pathlib import Path
from typing import Any

from llmtune.data.readers import Rows, Splits, carve, read_rows
from llmtune.data.templates import Template
from llmtune.errors import BadInput
from llmtune.recipes.common import Data, RecipeBase
from llmtune.recipes.finetune import FinetuneData, FinetuneRecipe, Source

SOURCE = "_source"
REPLAY = "replay"


@dataclass
class Pool:
    """The training rows of one source, and its share of an epoch."""

    name: str
    rows: Rows
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


def load_composite(
    recipe: RecipeBase,
    data: FinetuneData,
    required: tuple[str, ...],
    label_field: str | None,
    render_into: str | None,
) -> Splits:
    """Read every source, carve held-out rows from each, and draw the epoch's training rows."""
    pools, files = [], []
    held = {name: Rows() for name in ("validation", "test")}
    for key, source in task_sources(data):
        template = source.template or data.template
        read = _read_source(recipe, data, key, source.path, source.columns, template, required, render_into)
        files += read.files
        rows = _carve_each(_tagged(read.rows_read, source.label()), data, label_field, held, key)
        pools.append(Pool(source.label(), rows, weight=source.weight))
    for name in ("validation", "test"):
        spec = getattr(data, name)
        fraction = getattr(data.split, name) if data.split else 0
        if spec is None and fraction and not held[name].rows:
            raise BadInput(
                f"data.split.{name}: {fraction} of each source holds out no rows (sources too small); "
                f"raise it or give data.{name}",
                key=f"data.split.{name}",
            )
        if spec is not None:
            read = _read_source(
                recipe, data, f"data.{name}", spec, None, data.template, required, render_into
            )
            files += read.files
            held[name] = read.rows_read
    replay = None
    if data.replay is not None:
        template = data.replay.template or data.template
        spec, columns = data.replay.path, data.replay.columns
        read = _read_source(recipe, data, "data.replay.path", spec, columns, template, required, render_into)
        files += read.files
        replay = Pool(REPLAY, _tagged(read.rows_read, REPLAY), ratio=data.replay.ratio)
    train = draw(pools, replay, recipe.seed)
    splits = Splits(train, held["validation"], held["test"], files, data.skip_bad_rows)
    total = sum(p.weight or 0 for p in pools)
    splits.sources = {
        p.name: {"weight": round((p.weight or 0) / total, 4), "ratio": None, "rows": len(p.rows)}
        for p in pools
    }
    if replay is not None:
        splits.sources[REPLAY] = {"weight": None, "ratio": replay.ratio, "rows": len(replay.rows)}
    return splits


@dataclass
class _Read:
    rows_read: Rows
    files: list[Path]


def _read_source(
    recipe: RecipeBase,
    data: Data,
    key: str,
    spec: str | list[str],
    columns: dict[str, str] | None,
    template: str | None,
    required: tuple[str, ...],
    render_into: str | None,
) -> _Read:
    """One source's rows with its columns; with `render_into`, its model input rendered there."""
    needed = required
    if render_into is not None and template is not None:  # the template makes that field
        needed = tuple(f for f in required if f != render_into)
    columns = data.columns if columns is None else columns
    rows, files = read_rows(
        recipe, spec, key, columns=columns, required=needed, skip_bad_rows=data.skip_bad_rows
    )
    if render_into is not None and template is not None:
        render_inputs(rows, Template(template, where=_template_key(key)), render_into)
    return _Read(rows, files)


def _template_key(key: str) -> str:
    if key.startswith("data.train["):
        return f"{key}.template"
    return "data.replay.template" if key.startswith("data.replay") else "data.template"


def render_inputs(rows: Rows, template: Template, field: str) -> None:
    """Each row's model input, rendered from its own fields, into `field` (BadInput names file:line)."""
    if rows.rows:
        template.check_fields(set(rows.rows[0]), file=rows.where[0].rsplit(":", 1)[0])
    for row, where in zip(rows.rows, rows.where):
        row[field] = template.render(row, where=where)


def _tagged(rows: Rows, name: str) -> Rows:
    for row in rows.rows:
        row[SOURCE] = name
    return rows


def _carve_each(
    rows: Rows, data: FinetuneData, label_field: str | None, held: dict[str, Rows], key: str
) -> Rows:
    """Carve data.split's fractions of this source's rows (as load_splits does for one train set)."""
    if data.split is None:
        return rows
    total = len(rows)
    for name in ("validation", "test"):
        fraction = getattr(data.split, name)
        if not fraction or getattr(data, name) is not None:
            continue
        n_held = round(total * fraction)
        if n_held == 0:  # a small source gives no held-out rows; the others may
            continue
        rows, out = carve(rows, n_held, data.split.seed, label_field, f"data.split.{name} ({key})")
        held[name].rows.extend(out.rows)
        held[name].where.extend(out.where)
    return rows


def draw(pools: list[Pool], replay: Pool | None, seed: int) -> Rows:
    """The epoch's training rows: N task rows drawn by weight, plus replay at its ratio (see the
    module's docstring), in a random order."""
    import numpy

    rng = numpy.random.default_rng(seed)
    n = sum(len(p.rows) for p in pools)
    weights = numpy.array([p.weight for p in pools], dtype=float)
    counts = rng.multinomial(n, weights / weights.sum()).tolist()
    parts = [(pool, count) for pool, count in zip(pools, counts)]
    if replay is not None:
        assert replay.ratio is not None
        parts.append((replay, round(n * replay.ratio / (1 - replay.ratio))))
    rows, where = [], []
    for pool, count in parts:
        for i in _take(len(pool.rows), count, rng):
            rows.append(pool.rows.rows[i])
            where.append(pool.rows.where[i])
    order = rng.permutation(len(rows)).tolist()
    skipped = sum(p.rows.skipped for p, _ in parts)
    return Rows([rows[i] for i in order], [where[i] for i in order], skipped)


def _take(size: int, count: int, rng: Any) -> list[int]:
    """`count` indices of a pool of `size`: whole passes in a fresh order each, then part of one."""
    out: list[int] = []
    while len(out) < count:
        out += rng.permutation(size).tolist()
    return out[:count]


def count_sources(splits: Splits) -> None:
    """Record the rows drawn per source (after data.limit) and their share of the epoch."""
    if not splits.sources:
        return
    drawn = dict.fromkeys(splits.sources, 0)
    for row in splits.train.rows:
        drawn[row[SOURCE]] += 1
    total = max(len(splits.train), 1)
    for name, entry in splits.sources.items():
        entry.update(drawn=drawn[name], share=round(drawn[name] / total, 4))
        for split in ("validation", "test"):
            entry[split] = sum(r.get(SOURCE) == name for r in getattr(splits, split).rows)


def read_retain(
    recipe: RecipeBase, data: Data, label_field: str | None, render_into: str | None
) -> tuple[Rows, list[Path]]:
    """evaluation.retain's general rows (data.columns), read before any model loads so that a bad
    file is refused before training. Head tasks need a label, and their input as the training
    rows have it: rendered here for composite data, else by the job's data.template or the text
    field. SFT (`render_into` None) decides each row's format itself."""
    if not isinstance(recipe, FinetuneRecipe) or recipe.evaluation.retain is None:
        return Rows(), []
    required: tuple[str, ...] = ()
    template = None
    if render_into is not None and label_field:
        required = (label_field,)
        if is_composite(data):
            template, required = data.template, (render_into, label_field)
        elif data.template is None:
            required = (render_into, label_field)
    read = _read_source(
        recipe, data, "evaluation.retain", recipe.evaluation.retain, None, template, required, render_into
    )
    return read.rows_read, read.files
