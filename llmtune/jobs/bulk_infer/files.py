"""bulk-infer's files: the model fingerprint, the append-only journal that resume reads, shard
merging, csv/parquet (paths and ids are in `paths.py`).

Every result row is appended to a JSON-lines *journal* in flushed, fsynced chunks, written with
SIGTERM/SIGINT/SIGHUP held back (the one journal implementation: `llmtune.inference.journal`,
shared with distill's labelling and rlhf's collect). The journal is the source of truth: a rerun skips the ids it holds (by
`id_key`, so that ids keep their type and `1` is not `"1"`), a line torn by a crash is cut off on
the next run, and a row is never written twice. For `x.jsonl` the journal is the output itself;
for csv and parquet it is `x.journal.jsonl`, and `x.csv` / `x.parquet` is rewritten atomically
from it at the end of a run. The errors file is replaced at the end of each run (temp + rename),
never truncated in place. No written path may be a read path: `check_paths`, before anything opens.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from llmtune.errors import BadInput
from llmtune.inference.journal import AppendFile, ReplacingFile, digest_folder, encode, iter_journal
from llmtune.inference.journal import repair_journal as cut_torn_line
from llmtune.jobs.bulk_infer.paths import OutputPaths, id_key
from llmtune.models.info import resolve_model_path
from llmtune.outputs import atomic_write_text, temp_file, umask
from llmtune.recipes.bulk_infer import BulkInferRecipe

Record = dict[str, Any]


# ---------------------------------------------------------------- fingerprints
def model_fingerprint(recipe: BulkInferRecipe) -> str:
    """Changes when the weights or how they are loaded change: the model folders' content, not
    how their paths are spelled (moving a recipe must not make every row stale), nor the device."""
    ref = recipe.model
    if ref.scratch is not None:
        digest = hashlib.sha256(
            json.dumps(ref.model_dump(exclude={"device", "threads"}), sort_keys=True).encode()
        )
        digest.update(str(recipe.seed).encode())  # scratch weights come from the seed
        return digest.hexdigest()[:16]
    spelling = {"device", "path", "adapter", "revision", "threads"}
    digest = hashlib.sha256(json.dumps(ref.model_dump(exclude=spelling), sort_keys=True).encode())
    for role, folder in _model_folders(recipe):
        digest.update(role.encode())
        digest_folder(digest, folder)
    return digest.hexdigest()[:16]


def _model_folders(recipe: BulkInferRecipe) -> list[tuple[str, Path]]:
    single = recipe.resolve_path(recipe.model.path or "")
    if recipe.model.path and single.is_file():  # a GGUF file (engine: llamacpp)
        return [("model", single)]
    folders = [("model", Path(resolve_model_path(recipe.model, recipe, "model")))]
    if recipe.model.adapter:
        folders.append(("adapter", recipe.resolve_path(recipe.model.adapter)))
    return folders


# --------------------------------------------------------------------- journal
def done_fingerprints(*paths: Path) -> dict[str, tuple[str | None, str | None]]:
    """id_key -> (model_fingerprint, prompt_fingerprint) of every row already written."""
    done: dict[str, tuple[str | None, str | None]] = {}
    for path in paths:
        for record in iter_journal(path):
            done[id_key(record["id"])] = (record.get("model_fingerprint"), record.get("prompt_fingerprint"))
    return done


def repair_journal(path: Path) -> int:
    """Cut a last line torn by a crash (`inference.journal.repair_journal`); any other line that
    is not a result row means the file is not a journal bulk-infer wrote: BadInput, and the file
    is left as it is."""

    def refuse(number: int) -> BadInput:
        return BadInput(
            "is not a result row that bulk-infer wrote; output.path must be a file that bulk-infer "
            "writes (move this file away, or fix the line)",
            file=f"{path}:{number}",
            key="output.path",
        )

    return cut_torn_line(path, refuse)


def rewrite_journal(path: Path, keep: Callable[[Record], bool]) -> int:
    """Atomically drop the rows `keep` refuses; returns how many were dropped."""
    records = list(iter_journal(path))
    kept = [r for r in records if keep(r)]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(_line(r) for r in kept))
    return len(records) - len(kept)


def _line(record: Record) -> str:
    return encode(record, default=str)


def result_file(path: Path) -> AppendFile:
    """The journal of results, appended in whole chunks (values JSON has no type for as text)."""
    return AppendFile(path, default=str)


def errors_file(path: Path) -> ReplacingFile:
    """This run's failures, replacing the last run's errors file when the run ends."""
    return ReplacingFile(path, default=str)


# -------------------------------------------------------- materialise and merge
def materialise(journal: Path, results: Path) -> None:
    """Write the csv/parquet results file from the journal, atomically (jsonl: nothing to do)."""
    if results == journal:
        return
    records = list({id_key(r["id"]): r for r in iter_journal(journal)}.values())
    if len({type(r["id"]) for r in records}) > 1:  # a typed column cannot hold 1 and "1" apart
        records = [{**r, "id": id_key(r["id"])} for r in records]
    fd, tmp = temp_file(results.parent, results.name)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # the user's umask, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:  # written through the new file's descriptor, never its name
            if results.suffix.lower() == ".parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.Table.from_pylist(records), f)
            else:
                _write_csv(records, f)
        os.replace(tmp, results)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_csv(records: list[Record], out: IO[bytes]) -> None:
    import csv

    flat = []
    for record in records:
        row: Record = {}
        for key, value in record.items():
            if key == "scores" and isinstance(value, dict):  # one column per label
                row.update({f"score_{label}": p for label, p in value.items()})
            elif isinstance(value, list | dict):
                row[key] = json.dumps(value, ensure_ascii=False)
            else:
                row[key] = value
        flat.append(row)
    columns = list(dict.fromkeys(k for row in flat for k in row))
    f = io.TextIOWrapper(out, encoding="utf-8", newline="")
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(flat)
    f.flush()
    f.detach()


def shard_parts(paths: OutputPaths) -> list[Path]:
    """Every shard part file beside the results (any N)."""
    parts = _glob_parts(paths.results)
    return sorted(Path(p) for p in parts if re.search(r"\.shard-\d+-of-\d+\.jsonl$", p))


def _glob_parts(path: Path) -> list[str]:
    pattern = os.path.join(glob.escape(str(path.parent)), glob.escape(path.stem) + ".shard-*-of-*.jsonl")
    return glob.glob(pattern)


def merge_shards(paths: OutputPaths) -> dict[str, Any]:
    """Join the shard part files into the main journal (each id once, newest wins), then the
    results file and the errors file. Part files stay, so the next sharded run resumes."""
    parts = shard_parts(paths)
    if not parts:
        raise BadInput(f"no shard part files beside {paths.results} (run with --shard I/N first)")
    journal = paths.main_journal()
    merged: dict[str, Record] = {id_key(r["id"]): r for r in iter_journal(journal)}
    before = len(merged)
    for part in parts:
        merged.update({id_key(r["id"]): r for r in iter_journal(part)})
    atomic_write_text(journal, "".join(_line(r) for r in merged.values()))
    materialise(journal, paths.results)
    error_parts = sorted(_glob_parts(paths.errors))
    error_lines = [line for p in error_parts for line in Path(p).read_text(encoding="utf-8").splitlines(True)]
    atomic_write_text(paths.errors, "".join(error_lines))
    counts = sorted({int(m[1]) for p in parts if (m := re.search(r"-of-(\d+)\.jsonl$", p.name))})
    present = {(int(m[1]), int(m[2])) for p in parts if (m := re.search(r"shard-(\d+)-of-(\d+)", p.name))}
    missing = [f"{i}/{n}" for n in counts for i in range(n) if (i, n) not in present]
    return {
        "merged_parts": [str(p) for p in parts],
        "rows": len(merged),
        "new_rows": len(merged) - before,
        "failed_rows": len(error_lines),
        "missing_shards": missing,
        "output": str(paths.results),
        "errors_file": str(paths.errors),
    }
