"""`llmtune bulk-infer`: run a model over large files, resumable and safe to run from cron.

Steps: refuse a written path that is also a read path; take the lock beside the output (held
-> exit 75); read and check the input rows (ids, duplicates) and the template (bad input -> exit
2, nothing written); work out which ids are already in the output; print the plan on --dry-run;
when rows are owed, load the model (a rerun with nothing new imports no torch and loads nothing); then, chunk by chunk, render prompts, run the shared batched engine and append
the results (flushed) to the journal. Rows that fail go to the errors file and make the exit code
3. SIGTERM/SIGINT stop the run between two writes: finished rows stay in the journal and a plain
rerun does the rest. See `llmtune.jobs.bulk_infer.files` for the files' design.

    llmtune bulk-infer recipes/bulk-infer-sentiment.yaml
    llmtune bulk-infer recipe.yaml --shard 0/4      # one of 4 processes; then --merge-shards
    llmtune bulk-infer recipe.yaml --refresh stale  # recompute rows of an older model/prompt
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llmtune.inference.registry as registry
import llmtune.jobs.bulk_infer.chunks as chunks
import llmtune.jobs.bulk_infer.files as bulk_io
import llmtune.jobs.bulk_infer.paths as bulk_paths
import llmtune.jobs.bulk_infer.ray_pool as ray_pool
from llmtune.console import say, table
from llmtune.data.templates import Template
from llmtune.errors import BadInput, RowsFailed
from llmtune.inference.interface import InferenceEngine
from llmtune.inference.journal import signals_held
from llmtune.jobs.bulk_infer.inputs import InputRow, found_in_journal, read_input
from llmtune.jobs.bulk_infer.model import (
    check_without_weights,
    model_info,
    runtime_of,
    setup_model,
    with_model_labels,
)
from llmtune.jobs.bulk_infer.progress import Tally, summarise
from llmtune.models.cpu import last_choice
from llmtune.models.loading import quiet_libraries
from llmtune.models.positions import check_new_tokens
from llmtune.outputs import OutputLock, check_plain_file
from llmtune.recipes.bulk_infer import BulkInferRecipe
from llmtune.runs.options import JobOptions


def run(recipe: BulkInferRecipe, options: JobOptions) -> dict[str, Any]:
    """Run bulk inference from a validated recipe; returns the summary (for --json)."""
    shard = bulk_paths.parse_shard(options.shard)
    paths = bulk_paths.output_paths(recipe, options.output, shard)
    bulk_paths.check_paths(recipe, options.output)  # before any file is opened, the lock included
    if options.merge_shards:
        return merge(paths, shard, dry_run=options.dry_run)
    refresh = options.refresh
    if refresh not in (None, "stale"):
        raise BadInput(f"expected --refresh stale, got {refresh!r}", key="--refresh")
    limit = options.limit
    if limit is not None and limit < 1:
        raise BadInput(f"expected a positive number of rows, got {limit}", key="--limit")

    # the lock comes first, so that an overlapping cron run exits 75 before reading anything
    OutputLock(paths.lock).check()  # a link or a foreign file there: exit 2, in a dry run too
    lock = None if options.dry_run else _take_lock(paths.lock)
    try:
        check_no_links(paths)  # after the lock: an overlapping run exits 75 whatever it finds
        if recipe.engine == "ray":
            ray_pool.check_installed()
        registry.require(runtime_of(recipe))
        rows, files, duplicates = read_input(recipe, shard)
        template = Template(recipe.template, where="template")
        if rows:
            template.check_fields(set().union(*(r.row for r in rows)), file=str(files[0]))
        # a cron rerun with every id in the journal loads nothing: the model is only read, not checked
        owed = refresh == "stale" or not _all_done(rows, paths)
        info = model_info(recipe, deep=owed or lock is None)
        recipe = with_model_labels(recipe, info)
        if recipe.task == "generate" and recipe.engine != "llamacpp":  # a GGUF file has no config.json
            check_new_tokens(
                recipe, recipe.model, recipe.generation.max_new_tokens, "generation.max_new_tokens"
            )
        fingerprints = {
            "model_fingerprint": bulk_io.model_fingerprint(recipe),
            "prompt_fingerprint": recipe.prompt_fingerprint(),
        }
        plan = {**_plan(recipe, paths, rows, fingerprints, refresh, limit), "duplicate_rows": duplicates}
        if lock is None:
            table("plan (dry run: nothing written)", ["item", "value"], [[k, v] for k, v in plan.items()])
            return {"dry_run": True, **plan}
        engine = None
        # nothing owed (a cron rerun with no new rows): load nothing, not even torch. ONNX Runtime
        # needs no torch (an export quiets the libraries itself); ray's replicas load the model,
        # the same checks run here without weights
        if plan["to_do"]:
            if runtime_of(recipe, info.head) != "onnx":
                quiet_libraries(options.debug)
            if recipe.engine == "ray":
                check_without_weights(recipe, info)
            else:
                engine = setup_model(recipe, info)
        if bulk_io.repair_journal(paths.journal):  # BadInput when it is not a journal of ours
            say(f"repaired {paths.journal}: cut the torn last line a crash left")
    except BaseException:  # bad input: leave no trace, not even the lock's folder
        if lock is not None:
            lock.discard()
        raise
    try:
        if refresh == "stale":
            dropped = bulk_io.rewrite_journal(paths.journal, lambda r: _current(r, fingerprints))
            say(f"--refresh stale: {dropped} row(s) with other fingerprints will be recomputed")
        done = found_in_journal(rows, bulk_io.done_fingerprints(*_journals(paths)))
        pending = [r for r in rows if r.key not in done]
        todo = pending[:limit]
        say(f"{len(todo)} row(s) to do, {len(rows) - len(pending)} already done")
        if recipe.engine == "ray":
            tally = ray_pool.infer(recipe, info, todo, paths, fingerprints, debug=options.debug)
        elif engine is None:
            tally = Tally()
        else:
            tally = infer(recipe, engine, todo, paths, fingerprints)
        if shard is None:
            bulk_io.materialise(paths.journal, paths.results)
    finally:
        with signals_held():  # a second signal must not cut the clean-up short
            lock.release()
            if engine is not None:
                engine.close()
    summary = summarise(paths, plan, tally, len(rows) - len(pending), len(pending) - len(todo))
    if (choice := last_choice()) is not None:  # set when a model ran on the CPU
        summary["threads"] = f"{choice.threads or 'default'} ({choice.reason})"
    if tally.failed:
        raise RowsFailed(f"{tally.failed} row(s) failed; see {paths.errors}", summary)
    return summary


def check_no_links(paths: bulk_paths.OutputPaths) -> None:
    """Refuse (exit 2, naming it) a symlink, or a non-regular file, at a path this run writes; a
    hard link too where the file is appended to in place (the journal)."""
    for written in {paths.journal, paths.results, paths.errors}:
        check_plain_file(written, in_place=written == paths.journal)


def _all_done(rows: list[InputRow], paths: bulk_paths.OutputPaths) -> bool:
    done = found_in_journal(rows, bulk_io.done_fingerprints(*_journals(paths)))
    return all(r.key in done for r in rows)


def _take_lock(path: Path) -> OutputLock:
    lock = OutputLock(path)
    lock.acquire()
    return lock


def merge(paths: bulk_paths.OutputPaths, shard: tuple[int, int] | None, *, dry_run: bool) -> dict[str, Any]:
    """`--merge-shards`: join every shard's part file into the output, under the output's lock."""
    if shard is not None:
        raise BadInput("--merge-shards joins every shard: leave out --shard", key="--merge-shards")
    if dry_run:
        parts = bulk_io.shard_parts(paths)
        say(f"would merge {len(parts)} part file(s) into {paths.results}")
        return {"dry_run": True, "parts": [str(p) for p in parts]}
    lock = _take_lock(paths.lock)
    try:
        check_no_links(paths)
        summary = bulk_io.merge_shards(paths)
    finally:
        lock.release()
    say(f"merged {len(summary['merged_parts'])} part file(s): {summary['rows']} rows in {paths.results}")
    if summary["missing_shards"]:
        say(f"warning: no part file yet for shard(s) {', '.join(summary['missing_shards'])}")
    return summary


def _journals(paths: bulk_paths.OutputPaths) -> list[Path]:
    # a shard also skips ids that an earlier merge put in the main journal
    return [paths.journal] if paths.shard is None else [paths.main_journal(), paths.journal]


def _current(record: dict[str, Any], fingerprints: dict[str, str]) -> bool:
    return all(record.get(k) == v for k, v in fingerprints.items())


def _plan(
    recipe: BulkInferRecipe,
    paths: bulk_paths.OutputPaths,
    rows: list[InputRow],
    fingerprints: dict[str, str],
    refresh: str | None,
    limit: int | None,
) -> dict[str, Any]:
    done = found_in_journal(rows, bulk_io.done_fingerprints(*_journals(paths)))
    stale = sum(1 for r in rows if r.key in done and done[r.key] != tuple(fingerprints.values()))
    pending = sum(1 for r in rows if r.key not in done) + (stale if refresh == "stale" else 0)
    plan = {
        "input_rows": len(rows),
        "already_done": len(rows) - pending,
        "to_do": min(pending, limit) if limit else pending,
        "stale": stale,
        "model": recipe.model.describe(),
        "task": recipe.task,
        "engine": recipe.engine,
        "output": str(paths.results),
        "journal": str(paths.journal),
        "errors_file": str(paths.errors),
        "shard": f"{paths.shard[0]}/{paths.shard[1]}" if paths.shard else None,
        **fingerprints,
    }
    if stale and refresh != "stale":
        say(f"{stale} row(s) were made with another model or prompt; --refresh stale recomputes them")
    return plan


def infer(
    recipe: BulkInferRecipe,
    engine: InferenceEngine,
    todo: list[InputRow],
    paths: bulk_paths.OutputPaths,
    fingerprints: dict[str, str],
) -> Tally:
    """Run the rows chunk by chunk; each chunk's results and errors are appended and flushed."""
    tally = Tally()
    template = Template(recipe.template, where="template")
    size = recipe.batching.chunk_rows
    with chunks.writing(paths, len(todo), tally) as writer:
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            ready, prompts, failures = chunks.render_prompts(recipe, engine, template, chunk, tally)
            results, run_failures = chunks.run_chunk(recipe, engine, ready, prompts)
            records = [chunks.record(recipe, r, res, fingerprints) for r, res in results]
            tokens = sum(res.get("_new_tokens", 0) for _, res in results)
            writer.add(records, failures + run_failures, rows=len(chunk), new_tokens=tokens)
    return tally
