"""The teacher labels, scores or completes every row through the shared inference engine, into a
journal in the run directory (`teacher_labels.jsonl`; causal_lm completions in
`teacher_generations.jsonl`): one line per distinct model input, keyed by a hash of that input
and stamped with the teacher's and the prompt's fingerprints. A run stopped while labelling and
continued with --resume computes only what is missing; a changed teacher or prompt makes the old
lines stale (they are not reused)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.console import RowProgress, say
from llmtune.inference.journal import Journal, folder_fingerprint, text_fingerprint
from llmtune.models.loading import LoadedModel, resolve_model_path
from llmtune.recipes.distill import DistillRecipe

JOURNAL = "teacher_labels.jsonl"
GENERATIONS = "teacher_generations.jsonl"
CHUNK_ROWS = 64  # rows labelled between two journal writes: what a kill can lose
Record = dict[str, Any]


@dataclass
class TeacherLabels:
    """The teacher's probabilities per label for each model input, and how many were computed
    now (teacher calls) or reused from the journal."""

    scores: dict[str, list[float]]
    labelled: int
    reused: int
    seconds: float

    def of(self, prompt: str) -> list[float]:
        return self.scores[input_key(prompt)]


def input_key(prompt: str) -> str:
    """The journal's id for a model input: the same text gives the same teacher output."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:24]


def teacher_fingerprint(recipe: DistillRecipe) -> str:
    """Changes when the teacher's files, or how it is loaded, change (not with its device)."""
    ref = recipe.teacher
    settings = ref.model_dump(exclude={"device", "path", "adapter", "revision"})
    if ref.scratch is not None:
        return text_fingerprint(settings, recipe.seed)  # scratch weights come from the seed
    folder = Path(resolve_model_path(ref, recipe, "teacher"))
    parts = [folder_fingerprint(folder, settings)]
    if ref.adapter:
        parts.append(folder_fingerprint(recipe.resolve_path(ref.adapter)))
    return text_fingerprint(*parts)


def journal_stamp(recipe: DistillRecipe, settings: Any) -> dict[str, str]:
    """What a journal line is stamped with: the teacher's fingerprint and the prompt's (template,
    columns, max_length, and the task's `settings`: labels, "score" or the generation settings)."""
    data = recipe.data
    prompt = text_fingerprint(data.template, data.columns, data.max_length, settings)
    return {"teacher": teacher_fingerprint(recipe), "prompt": prompt}


def teacher_engine(
    recipe: DistillRecipe,
    teacher: LoadedModel,
    label_range: tuple[float, float] | None = None,
    labels: list[str] | None = None,
) -> Any:
    """The shared inference engine over the teacher, at the recipe's batch size and max_length:
    vLLM for a causal LM teacher with engine: vllm (teachers with a head run here), ONNX Runtime
    for a head with engine: onnx (the loaded teacher exported once into its cache)."""
    from llmtune.inference.registry import over_loaded

    if recipe.engine == "onnx" and recipe.task != "causal_lm":
        return over_loaded(
            "onnx",
            teacher,
            ref=recipe.teacher,
            recipe=recipe,
            key="teacher",
            head=recipe.task,
            labels=labels,
            batch_size=recipe.measure_batch_size,
            max_length=recipe.data.max_length,
            label_range=label_range,
        )

    if recipe.engine == "vllm" and recipe.task == "causal_lm":
        return over_loaded(
            "vllm",
            teacher,
            ref=recipe.teacher,
            recipe=recipe,
            key="teacher",
            max_length=recipe.data.max_length,
            max_new_tokens=recipe.generation.max_new_tokens,
            settings={"vllm": recipe.vllm},
        )
    return over_loaded(
        "hf",
        teacher,
        batch_size=recipe.measure_batch_size,
        max_length=recipe.data.max_length,
        label_range=label_range,
    )


def label_rows(
    engine: Any, prompts: list[str], labels: list[str], journal_path: Path, stamp: dict[str, str]
) -> TeacherLabels:
    """The teacher's label probabilities for every prompt, computing only those the journal
    lacks (under the same `stamp` fingerprints), CHUNK_ROWS at a time, with progress lines."""

    def classify(chunk: list[str]) -> list[Record]:
        return [{"scores": [r[label] for label in labels]} for r in engine.classify(chunk, labels)]

    done = journal_outputs(classify, prompts, journal_path, stamp)
    scores = {key: r["scores"] for key, r in done.records.items()}
    return TeacherLabels(scores, done.labelled, done.reused, done.seconds)


@dataclass
class TeacherOutputs:
    """The journal's record for each model input (what the teacher computed for it), and how
    many were computed now or reused from the journal."""

    records: dict[str, Record]
    labelled: int
    reused: int
    seconds: float

    def of(self, prompt: str) -> Record:
        return self.records[input_key(prompt)]


def journal_outputs(
    compute: Callable[[list[str]], list[Record]],
    prompts: list[str],
    journal_path: Path,
    stamp: dict[str, str],
    *,
    verb: str = "labelled",
    chunk_rows: int = CHUNK_ROWS,
) -> TeacherOutputs:
    """`compute(chunk)` (one record of fields per prompt) for every distinct prompt the journal
    lacks under `stamp`, `chunk_rows` at a time, each chunk appended to the journal before the
    next starts (so a kill loses at most one chunk), with a progress line per chunk. Under
    torchrun, rank 0 alone asks the teacher and keeps the journal; the other ranks wait for
    its records."""
    from llmtune.runs.distributed import agreed

    return agreed(
        lambda: _journal_outputs(compute, prompts, journal_path, stamp, verb=verb, chunk_rows=chunk_rows),
        only_main=True,
    )


def _journal_outputs(
    compute: Callable[[list[str]], list[Record]],
    prompts: list[str],
    journal_path: Path,
    stamp: dict[str, str],
    *,
    verb: str,
    chunk_rows: int,
) -> TeacherOutputs:
    journal = Journal(journal_path)
    done = journal.done(**stamp)
    todo = list(dict.fromkeys(p for p in prompts if input_key(p) not in done))
    reused = len({input_key(p) for p in prompts} & set(done))
    if reused:
        say(f"teacher outputs: {reused} rows reused from {journal_path.name}, {len(todo)} to compute")
    started = time.monotonic()
    progress = RowProgress(f"teacher {verb}", len(todo))  # one bar, not a line per chunk
    try:
        for start in range(0, len(todo), chunk_rows):
            chunk = todo[start : start + chunk_rows]
            records = [{"id": input_key(p), **stamp, **r} for p, r in zip(chunk, compute(chunk), strict=True)]
            journal.append(records)
            done.update({r["id"]: r for r in records})
            progress.advance(len(chunk))
    finally:
        progress.close()
    return TeacherOutputs(done, len(todo), reused, time.monotonic() - started)
