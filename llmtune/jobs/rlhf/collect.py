"""Stage collect: sample K responses per prompt for people to rank (`llmtune rank`).

Steps: read every row of data.train (no split is carved: every prompt is collected; data.limit
applies), render each prompt and give it an id, refuse a model that is not a causal LM (all before
anything is written), then open the run directory, load the model once and sample
`generation.num_generations` responses per prompt through the shared inference engine, and write
`candidates.jsonl` (one row per prompt, in data order: id, prompt, responses lettered A, B, C... by
position, an empty ranking) and report.md.

Row ids: the row's `id` (text or an integer, kept as it is) or, without one, `row-N` where N is
the row's 1-based position among the readable rows of data.train (lines that are not rows at all,
skipped by data.skip_bad_rows, are not counted; rows skipped for their prompt are). Two rows with
one id are refused (exit 2, both file:lines).

Reproducible and resumable: each prompt is sampled on its own from a seed made of the recipe's
seed and the row's id, so its responses do not depend on which other prompts ran with it, or
before it. Responses are journaled per prompt in `collect_journal.jsonl` (CHUNK_PROMPTS at a
time, SIGTERM/SIGINT held while a chunk is written), stamped with fingerprints of the model's
files and of the sampling settings; `--resume` after an interruption samples only the prompts the
journal lacks under the same fingerprints, and its candidates.jsonl is byte for byte the one an
uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llmtune.inference.registry as registry
from llmtune.console import say, shown
from llmtune.data.readers import SKIP_HINT, read_rows, refuse
from llmtune.data.templates import template_of
from llmtune.errors import BadInput
from llmtune.inference.journal import Journal, folder_fingerprint, signals_held, text_fingerprint
from llmtune.jobs.rlhf.collect_report import CANDIDATES, collect_plan, write_report
from llmtune.jobs.rlhf.common import prompt_text
from llmtune.models.positions import check_new_tokens
from llmtune.outputs import OutputLock
from llmtune.recipes.rlhf import RlhfRecipe
from llmtune.runs.lifecycle import recorded, show_plan
from llmtune.runs.options import JobOptions
from llmtune.runs.rundir import RunDir, run_dir_path

JOURNAL = "collect_journal.jsonl"
CHUNK_PROMPTS = 8  # prompts sampled between two journal writes: what a kill can lose


@dataclass
class Prompt:
    """One prompt to collect responses for."""

    id: Any  # the row's id as the data gives it (or "row-N")
    text: str
    where: str  # the row's file:line

    @property
    def key(self) -> str:
        """The journal's id for this prompt: its row id and its text."""
        return text_fingerprint(str(self.id), self.text)

    def seed(self, recipe_seed: int) -> int:
        """The sampling seed of this prompt alone, so no other prompt changes its responses."""
        digest = hashlib.sha256(f"{recipe_seed}:{self.id}".encode()).hexdigest()
        return int(digest[:8], 16)


def run_collect(recipe: RlhfRecipe, options: JobOptions) -> dict[str, Any]:
    """Sample K responses per prompt into candidates.jsonl; returns the summary (for --json)."""
    run_dir = RunDir(run_dir_path(recipe, options.output), recipe)
    # first: an overlapping run exits 75 before reading anything (a dry run takes no lock)
    run_dir.claim(resume=options.resume, dry_run=options.dry_run)
    # `llmtune rank` takes this lock while people rank: collect never replaces the file under it
    candidates_lock = OutputLock(run_dir.path / f"{CANDIDATES}.lock")
    try:
        check_rankings_kept(recipe, run_dir.path / CANDIDATES)
        if options.dry_run:
            candidates_lock.check()
        else:
            candidates_lock.acquire()
            check_rankings_kept(recipe, run_dir.path / CANDIDATES)  # again, under the lock
        if recipe.engine == "vllm":
            registry.require("vllm")
        prompts, files, skipped = read_prompts(recipe)
        check_causal_lm(recipe)
        check_new_tokens(recipe, recipe.model, recipe.generation.max_new_tokens, "generation.max_new_tokens")
        plan = {**collect_plan(recipe, run_dir, len(prompts)), "skipped_rows": skipped}
        if options.dry_run:
            show_plan(plan)
            say(f"first prompt ({shown(prompts[0].id)}):\n{shown(prompts[0].text)}")
            run_dir.abandon()
            return {"dry_run": True, **plan}
    except BaseException:
        candidates_lock.discard()
        run_dir.abandon()  # bad input: nothing written
        raise

    def work() -> dict[str, Any]:
        responses, done = sample_all(recipe, run_dir, prompts)
        rows = [{"id": p.id, "prompt": p.text, "responses": responses[p.key], "ranking": ""} for p in prompts]
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        run_dir.write_text(CANDIDATES, text)
        summary = {**_summary(recipe, rows, done), "skipped_rows": skipped}
        summary["candidates"] = str(run_dir.path / CANDIDATES)
        summary["next"] = f"llmtune rank {run_dir.path / CANDIDATES}"
        write_report(run_dir, recipe, summary)
        return summary

    try:
        summary = recorded(run_dir, options, files, work)
    finally:
        with signals_held():
            candidates_lock.release()
    say(f"next: rank them with `{summary['next']}`")
    return summary


def check_rankings_kept(recipe: RlhfRecipe, candidates: Path) -> None:
    """Refuse a run that would replace a candidates file holding people's rankings (exit 2),
    unless the recipe says so (output.replace_rankings)."""
    if recipe.output.replace_rankings or not candidates.exists():
        return
    ranked = 0
    with candidates.open("rb") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            ranked += isinstance(row, dict) and bool(row.get("ranking"))
    if ranked:
        raise BadInput(
            f"{candidates} holds {ranked} ranking(s) people gave; this run would replace it and lose "
            "them. Keep them: move the file away (or rank into another file with `llmtune rank "
            "CANDIDATES --output FILE`), or set output.replace_rankings: true to replace it anyway",
            file=str(recipe.source) if recipe.source else None,
            key="output.replace_rankings",
        )


def read_prompts(recipe: RlhfRecipe) -> tuple[list[Prompt], list[Path], int]:
    """Every row of data.train (up to data.limit) as a Prompt, the files read and the bad rows
    skipped (data.skip_bad_rows). Refuses rows without a text prompt (all at once) and two rows
    with one id, naming their file:lines."""
    data = recipe.data
    source = str(recipe.source) if recipe.source else None
    if data.train is None:
        raise BadInput("stage collect needs data.train: the prompts to sample", file=source, key="data.train")
    unused = [name for name in ("validation", "test", "split") if getattr(data, name) is not None]
    if unused:
        say(f"stage collect reads data.train only; {', '.join(f'data.{n}' for n in unused)} not used")
    template = template_of(recipe.data.template)
    rows, files = read_rows(
        recipe,
        data.train,
        "data.train",
        columns=data.columns,
        required=() if template is not None else ("prompt",),
        skip_bad_rows=data.skip_bad_rows,
    )
    if data.limit is not None:
        rows = rows.subset(list(range(min(data.limit, len(rows)))), rows.skipped)
    prompts, bad = [], []
    for n, (row, where) in enumerate(zip(rows.rows, rows.where), 1):
        try:
            prompts.append(Prompt(_row_id(row, n, where), prompt_text(row, template, where), where))
        except BadInput as exc:  # every bad row at once, or skipped and counted like unreadable ones
            bad += exc.problems
    if bad and not data.skip_bad_rows:
        refuse(bad, f"{len(bad)} bad row(s): {SKIP_HINT}")
    if not prompts:
        raise BadInput(
            f"no usable prompts in data.train ({len(bad)} bad row(s) skipped)", file=source, key="data.train"
        )
    _check_unique(prompts)
    skipped = rows.skipped + len(bad)
    if skipped:
        say(f"{skipped} bad row(s) skipped (data.skip_bad_rows)")
    return prompts, files, skipped


def _row_id(row: dict[str, Any], n: int, where: str) -> Any:
    value = row.get("id")
    if value is None or value == "":
        return f"row-{n}"
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadInput(f"the row's id must be text or an integer, got {value!r}", file=where, key="id")
    return value


def _check_unique(prompts: list[Prompt]) -> None:
    first: dict[str, Prompt] = {}
    for p in prompts:
        seen = first.setdefault(str(p.id), p)
        if seen is not p:
            raise BadInput(
                f"id {p.id!r} is also the id of the row at {seen.where}; each prompt needs its own id "
                "(rows without an id get row-N, their position)",
                file=p.where,
                key="id",
            )


def check_causal_lm(recipe: RlhfRecipe) -> None:
    """Refuse a model that cannot generate (a sequence classifier, a bare encoder), from its
    files, before any weights load."""
    from llmtune.models.loading import inspect_model, pick_device

    pick_device(recipe.model.device)  # a named device that is missing: refused before the run opens
    info = inspect_model(recipe.model, recipe, "model")
    head = info.head or ("classification" if info.architectures else "causal_lm")
    if head != "causal_lm":
        what = ", ".join(info.architectures) or f"a {recipe.model.scratch.architecture} classifier"  # type: ignore[union-attr]
        raise BadInput(
            f"{recipe.model.describe()} is not a causal language model ({what}); stage collect samples "
            "responses from the policy: give a causal LM (e.g. an SFT run's model/)",
            file=str(recipe.source) if recipe.source else None,
            key="model",
        )


def model_fingerprint(recipe: RlhfRecipe) -> str:
    """Changes when the model's files (base and adapter), or how it is loaded, change; not with
    its device. A scratch model's weights come from the recipe's seed."""
    from llmtune.models.loading import inspect_model

    ref = recipe.model
    settings = ref.model_dump(exclude={"device", "path", "adapter", "revision", "threads"})
    if ref.scratch is not None:
        return text_fingerprint(settings, recipe.seed)
    info = inspect_model(ref, recipe, "model")
    assert info.path is not None
    parts = [folder_fingerprint(info.path, settings)]
    if info.adapter is not None:
        parts.append(folder_fingerprint(info.adapter))
    return text_fingerprint(*parts)


def sampling_fingerprint(recipe: RlhfRecipe) -> str:
    """Changes with anything else that decides a prompt's responses."""
    return text_fingerprint(recipe.generation.model_dump(), recipe.seed, recipe.data.max_length)


@dataclass
class Collected:
    """How many prompts were sampled now or reused from the journal, and what sampling cost."""

    generated: int
    reused: int
    tokens: int
    seconds: float
    truncated: int


def sample_all(
    recipe: RlhfRecipe, run_dir: RunDir, prompts: list[Prompt]
) -> tuple[dict[str, list[str]], Collected]:
    """Each prompt's responses (by Prompt.key): from the journal where it has them under the same
    fingerprints, else sampled now, CHUNK_PROMPTS at a time, each chunk journaled before the next."""
    journal = Journal(run_dir.path / JOURNAL)
    stamp = {"model": model_fingerprint(recipe), "sampling": sampling_fingerprint(recipe)}
    done = journal.done(**stamp)
    todo = [p for p in prompts if p.key not in done]
    reused = len(prompts) - len(todo)
    if reused:
        say(f"{reused} prompt(s) reused from {JOURNAL}, {len(todo)} to sample")
    tokens, truncated, seconds = 0, 0, 0.0
    if todo:
        engine = _engine(recipe, prompts)
        started = time.monotonic()  # sampling alone: the model's loading is not in the rate
        truncated = sum(n > recipe.data.max_length for n in engine.count_tokens([p.text for p in todo]))
        for start in range(0, len(todo), CHUNK_PROMPTS):
            records = []
            for p in todo[start : start + CHUNK_PROMPTS]:
                out = _sample(engine, recipe, p)
                tokens += out.new_tokens
                records.append(
                    {"id": p.key, "row": p.id, **stamp, "responses": out.texts, "tokens": out.new_tokens}
                )
            journal.append(records)
            done.update({r["id"]: r for r in records})
            finished = start + len(records)
            rate = finished / max(time.monotonic() - started, 1e-9)
            say(f"collect: sampled {finished}/{len(todo)} prompts ({rate:.2f} prompts/s)")
        seconds = time.monotonic() - started
    responses = {p.key: list(done[p.key]["responses"]) for p in prompts}
    return responses, Collected(len(todo), reused, tokens, seconds, truncated)


def _engine(recipe: RlhfRecipe, prompts: list[Prompt]) -> Any:
    from llmtune.models.loading import load_model

    say(f"loading {recipe.model.describe()}")
    loaded = load_model(recipe.model, recipe, head="causal_lm", corpus=[p.text for p in prompts])
    return registry.over_loaded(
        recipe.engine,
        loaded,
        ref=recipe.model,
        recipe=recipe,
        max_length=recipe.data.max_length,
        max_new_tokens=recipe.generation.max_new_tokens,
        settings={"vllm": recipe.vllm},
    )


def _sample(engine: Any, recipe: RlhfRecipe, prompt: Prompt) -> Any:
    # one prompt per call: its K samples come from its own seed whatever else runs (batching
    # several prompts would make each prompt's samples depend on its batch mates)
    g = recipe.generation
    (out,) = engine.generate(
        [prompt.text],
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k or None,
        num_return_sequences=g.num_generations,
        seed=prompt.seed(recipe.seed),
    )
    return out


def _summary(recipe: RlhfRecipe, rows: list[dict[str, Any]], done: Collected) -> dict[str, Any]:
    k = recipe.generation.num_generations
    duplicates = [k - len(set(row["responses"])) for row in rows]
    return {
        "stage": "collect",
        "status": "completed",
        "model": recipe.model.describe(),
        "prompts": len(rows),
        "responses_per_prompt": k,
        "responses": len(rows) * k,
        "generated_prompts": done.generated,
        "reused_from_journal": done.reused,
        "tokens_generated": done.tokens,
        "seconds": round(done.seconds, 2),
        "rows_per_second": round(done.generated / done.seconds, 2) if done.seconds > 0 else None,
        "tokens_per_second": round(done.tokens / done.seconds, 1) if done.seconds > 0 else None,
        "duplicates": sum(duplicates),
        "prompts_with_duplicates": sum(d > 0 for d in duplicates),
        "empty_responses": sum(r == "" for row in rows for r in row["responses"]),
        "truncated_prompts": done.truncated,
    }
