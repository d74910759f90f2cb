"""bulk-infer's paths: where one process reads and writes (results, journal, errors, lock,
shard parts), the check that no written path is a read path (`check_paths`, before anything
opens), and row ids (typed: `1` is not `"1"`) with their stable shard.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from llmtune.errors import BadInput
from llmtune.recipes.bulk_infer import BulkInferRecipe

Record = dict[str, Any]
SHARD_RE = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class OutputPaths:
    """Where one bulk-infer process reads and writes."""

    results: Path
    journal: Path
    errors: Path
    lock: Path
    shard: tuple[int, int] | None = None

    def main_journal(self) -> Path:
        """The unsharded journal (the one --merge-shards writes)."""
        return _journal_for(self.results)


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """`I/N` (0 <= I < N) -> (I, N); None when not sharding."""
    if value is None:
        return None
    match = SHARD_RE.match(value.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise BadInput(f"expected I/N with 0 <= I < N (e.g. 0/4 .. 3/4), got {value!r}", key="--shard")
    return int(match[1]), int(match[2])


def output_paths(
    recipe: BulkInferRecipe, override: Path | None, shard: tuple[int, int] | None
) -> OutputPaths:
    """Results, journal, errors and lock paths; `--output` replaces output.path."""
    results = Path(os.path.normpath(override or recipe.resolve_path(recipe.output.path)))
    if results.suffix.lower() not in (".jsonl", ".csv", ".parquet"):
        raise BadInput(f"expected a .jsonl, .csv or .parquet output file, got {results}", key="--output")
    if recipe.output.errors and not override:
        errors = Path(os.path.normpath(recipe.resolve_path(recipe.output.errors)))
    else:
        errors = results.with_name(f"{results.stem}.errors.jsonl")
    if shard is None:
        journal = _journal_for(results)
        return OutputPaths(results, journal, errors, results.with_name(results.name + ".lock"))
    part = f"shard-{shard[0]}-of-{shard[1]}"
    journal = results.with_name(f"{results.stem}.{part}.jsonl")
    errors = errors.with_name(f"{errors.stem}.{part}.jsonl")
    return OutputPaths(results, journal, errors, journal.with_name(journal.name + ".lock"), shard)


def _journal_for(results: Path) -> Path:
    return (
        results if results.suffix.lower() == ".jsonl" else results.with_name(f"{results.stem}.journal.jsonl")
    )


def check_paths(recipe: BulkInferRecipe, override: Path | None) -> None:
    """Refuse (exit 2, before anything is opened) a path this job writes that is a path it reads
    (an input file, or a file the input glob would match next time) or another path it writes.
    Paths are compared after symlinks and `..` are resolved, and by inode for hard links."""
    writes = [(key, path, _identity(path)) for key, path in _written_paths(recipe, override)]
    for i, (key, _, ids) in enumerate(writes):
        for other_key, other, other_ids in writes[i + 1 :]:
            if ids & other_ids:
                _refuse(recipe, other_key, f"{other} is also {key}: choose another {other_key}")
    patterns = [recipe.input.path] if isinstance(recipe.input.path, str) else recipe.input.path
    for pattern in patterns:
        spelled = str(recipe.resolve_path(pattern))
        reads = {i: read for read in glob.glob(spelled, recursive=True) for i in _identity(Path(read))}
        for key, path, ids in writes:
            if PurePath(os.path.realpath(path)).match(os.path.realpath(spelled)):
                _refuse(
                    recipe, key, f"{path} is read as input (input.path {pattern!r}): choose another {key}"
                )
            same = [reads[i] for i in ids if i in reads] + [r for r in reads.values() if _other_part(r, path)]
            if same:
                _refuse(recipe, key, f"{path} is the input file {same[0]} (input.path): choose another {key}")


def _identity(path: Path) -> set[Any]:
    """What makes two paths one file: the same real path (symlinks, `..`), or the same inode
    (hard links) when the file exists."""
    ids: set[Any] = {os.path.realpath(path)}
    try:
        stat = os.stat(path)
        ids.add((stat.st_dev, stat.st_ino))
    except OSError:  # not there yet
        pass
    return ids


def _written_paths(recipe: BulkInferRecipe, override: Path | None) -> list[tuple[str, Path]]:
    """Every file a run, a --shard run or --merge-shards writes, with the key that names it
    (shard part files by the name of shard 0 of 2)."""
    main = output_paths(recipe, override, None)
    part = output_paths(recipe, override, (0, 2))
    out = "--output" if override else "output.path"
    err = "output.errors" if recipe.output.errors and not override else f"the errors file of {out}"
    writes = [(out, main.results), (f"the journal of {out}", main.journal), (err, main.errors)]
    writes += [(f"the lock of {out}", main.lock), (f"the --shard part files of {out}", part.journal)]
    writes += [(f"the --shard part files of {err}", part.errors), (f"the --shard lock of {out}", part.lock)]
    return [(key, path) for key, path in writes if key != f"the journal of {out}" or path != main.results]


def _other_part(read: str, written: Path) -> bool:
    """`read` is a shard part file (any I and N) of the output that `written` is a part file of."""
    if ".shard-" not in written.name:
        return False
    pattern = glob.escape(written.name.split(".shard-")[0]) + ".shard-*-of-*.jsonl"
    same_folder = os.path.realpath(Path(read).parent) == os.path.realpath(written.parent)
    return same_folder and PurePath(Path(read).name).match(pattern)


def _refuse(recipe: BulkInferRecipe, key: str, message: str) -> None:
    raise BadInput(
        f"{message}; no file is written to twice or over a file that is read",
        file=str(recipe.source) if recipe.source else None,
        key=key,
    )


def in_shard(row_id: Any, shard: tuple[int, int] | None) -> bool:
    """Stable assignment of an id to one of N shards (same on every machine and run)."""
    if shard is None:
        return True
    digest = hashlib.sha256(str(row_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") % shard[1] == shard[0]


def row_id(row: Record, id_column: str | None) -> Any:
    """The row's id as written in its id column (None when empty), or a hash of its content."""
    if id_column is not None:
        value = row.get(id_column)
        return None if value is None or value == "" else value
    text = json.dumps(row, sort_keys=True, default=str, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def id_key(value: Any) -> str:
    """The id's identity: its JSON text, so that `1` and `"1"` are two ids."""
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
