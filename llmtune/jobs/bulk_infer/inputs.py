"""bulk-infer's input rows: read in file order with their typed ids, each id once, duplicates
refused or counted, only this shard's rows; and which rows the journal already holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llmtune.jobs.bulk_infer.paths as bulk_paths
from llmtune.data.readers import expand_files, map_columns, read_file
from llmtune.errors import BadInput, Problem
from llmtune.recipes.bulk_infer import BulkInferRecipe


@dataclass
class InputRow:
    """One input row with its id (as written in the input), the id's key and where it came from."""

    id: Any
    row: dict[str, Any]
    where: str
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = bulk_paths.id_key(self.id)


def read_input(
    recipe: BulkInferRecipe, shard: tuple[int, int] | None
) -> tuple[list[InputRow], list[Path], int]:
    """Input rows (columns mapped) in file order, each id once, only this shard's ids; and how
    many rows repeated an earlier id. A repeated id with other content is refused (exit 2,
    naming both rows) unless `on_duplicate: first`; a plain copy of a row is counted, not run."""
    files = expand_files(recipe, recipe.input.path, "input.path")
    rows: list[InputRow] = []
    first: dict[str, InputRow] = {}
    duplicates, conflicts = 0, []
    for path in files:
        part = read_file(path, skip_bad_rows=False)
        for raw, where in zip(part.rows, part.where):
            item = InputRow(bulk_paths.row_id(raw, recipe.input.id_column), raw, where)
            if item.id is None:
                raise BadInput(f"row has no id in column {recipe.input.id_column!r}", file=where, key="input")
            item.row = map_columns(raw, recipe.input.columns)
            earlier = first.setdefault(item.key, item)
            if earlier is not item:
                duplicates += bulk_paths.in_shard(item.id, shard)
                if earlier.row != item.row and recipe.on_duplicate == "error":
                    conflicts.append(Problem(_conflict(earlier, item), file=where, key="on_duplicate"))
            elif bulk_paths.in_shard(item.id, shard):
                rows.append(item)
    if conflicts:
        raise BadInput(problems=conflicts[:20])
    if not rows and shard is None:
        raise BadInput(f"no rows in {', '.join(map(str, files))}", key="input.path")
    return rows, files, duplicates


def _conflict(earlier: InputRow, item: InputRow) -> str:
    return (
        f"id {item.id!r} is also the id of {earlier.where}, with other content; give each row its own "
        "id, or set on_duplicate: first to keep the first row"
    )


def found_in_journal(rows: list[InputRow], done: dict[str, Any]) -> dict[str, Any]:
    """Each input row's entry in the journal (keyed like the rows). Journals written before ids
    kept their type hold every id as text: such an entry counts for a number id when no input
    row has that text as its id."""
    keys = {r.key for r in rows}
    found = {}
    for item in rows:
        legacy = bulk_paths.id_key(str(item.id))
        if item.key in done:
            found[item.key] = done[item.key]
        elif not isinstance(item.id, str) and legacy in done and legacy not in keys:
            found[item.key] = done[legacy]
    return found
