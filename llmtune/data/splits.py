"""A recipe's data section read into train / validation / test rows, for every job: plain files,
or a mixture of sources drawn by `llmtune.data.mixture`; then `data.limit`, and the general rows
a finetune run measures forgetting on (evaluation.retain). How files become rows, and what
happens to bad rows, is `llmtune.data.readers`'s part."""

from __future__ import annotations

from pathlib import Path

from llmtune.data import mixture
from llmtune.data.readers import SPLIT_NAMES, Rows, Splits, carve_missing, read_rows
from llmtune.recipes.common import Data, Files, RecipeBase
from llmtune.recipes.sources import MixtureData


def load_splits(
    recipe: RecipeBase,
    data: Data,
    *,
    required: tuple[str, ...] = (),
    label_field: str | None = None,
    render_into: str | None = "text",
    retain: Files | None = None,
) -> Splits:
    """train/validation/test rows: read, carve missing splits from train, apply `limit`; and the
    `retain` rows (a finetune recipe's evaluation.retain).

    Data whose train is a mixture of sources, or that replays general rows, is read source by
    source and drawn by `llmtune.data.mixture`'s rule: each row then carries its source, and when
    `render_into` is a field (head tasks: "text") each row's model input is rendered into it with
    its source's template, so that the job applies no template of its own (None: the job renders
    per source, as SFT does).
    """
    if isinstance(data, MixtureData) and data.is_composite():
        splits = mixture.read_mixture(recipe, data, required, label_field, render_into)
    else:
        splits = _load_plain(recipe, data, required, label_field)
    if data.limit is not None:
        for name in SPLIT_NAMES:
            rows = getattr(splits, name)
            setattr(splits, name, rows.subset(list(range(min(data.limit, len(rows)))), rows.skipped))
    if splits.sources:
        held = {name: getattr(splits, name).rows for name in ("validation", "test")}
        mixture.count_sources(splits.sources, splits.train.rows, held)
    splits.retain = _read_retain(recipe, data, retain, label_field, render_into, splits.files)
    return splits


def _load_plain(recipe: RecipeBase, data: Data, required: tuple[str, ...], label_field: str | None) -> Splits:
    read, files = {name: Rows() for name in SPLIT_NAMES}, []
    options = {"columns": data.columns, "required": required, "skip_bad_rows": data.skip_bad_rows}
    for name in SPLIT_NAMES:
        if getattr(data, name) is not None:
            read[name], used = read_rows(recipe, getattr(data, name), f"data.{name}", **options)
            files.extend(used)
    train = carve_missing(read["train"], read, data, label_field)
    return Splits(train, read["validation"], read["test"], files, data.skip_bad_rows)


def _read_retain(
    recipe: RecipeBase,
    data: Data,
    retain: Files | None,
    label_field: str | None,
    render_into: str | None,
    files: list[Path],
) -> Rows:
    """The `retain` general rows (data.columns), read before any model loads so that a bad file is
    refused before training. A head task needs the label, and its input made as for the training
    rows: rendered here for composite data, else by the job (data.template or text). SFT
    (`render_into` None) decides each row's format itself."""
    if retain is None:
        return Rows()
    template, required = None, ()
    if render_into is not None and label_field is not None:  # a head task
        template = data.template if mixture.is_composite(data) else None
        needs_text = template is not None or data.template is None
        required = (*([render_into] if needs_text else []), label_field)
    reader = mixture.SourceReader(recipe, data, required, render_into, files)
    return reader.read("evaluation.retain", retain, None, template)
