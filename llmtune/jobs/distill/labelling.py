"""The teacher labels every row through the shared inference engine, into a journal in the run
directory (`teacher_labels.jsonl`): one line per distinct model input, keyed by a hash of that
input and stamped with the teacher's and the prompt's fingerprints. A run stopped while labelling
and continued with --resume labels only what is missing; a changed teacher or prompt makes the
old lines stale (they are not reused)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.console import say
from llmtune.inference.journal import Journal, folder_fingerprint, text_fingerprint
from llmtune.models.loading import resolve_model_path
from llmtune.recipes.distill import DistillRecipe

JOURNAL = "teacher_labels.jsonl"
CHUNK_ROWS = 64  # rows labelled between two journal writes: what a kill can lose


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


def label_rows(
    engine: Any, prompts: list[str], labels: list[str], journal_path: Path, stamp: dict[str, str]
) -> TeacherLabels:
    """The teacher's label probabilities for every prompt, computing only those the journal
    lacks (under the same `stamp` fingerprints), CHUNK_ROWS at a time, with progress lines."""
    journal = Journal(journal_path)
    done = {key: r["scores"] for key, r in journal.done(**stamp).items()}
    todo = list(dict.fromkeys(p for p in prompts if input_key(p) not in done))
    reused = len({input_key(p) for p in prompts} & set(done))
    if reused:
        say(f"teacher labels: {reused} rows reused from {journal_path.name}, {len(todo)} to label")
    started = time.monotonic()
    for start in range(0, len(todo), CHUNK_ROWS):
        chunk = todo[start : start + CHUNK_ROWS]
        results = engine.classify(chunk, labels)
        records = [
            {"id": input_key(p), **stamp, "scores": [r[label] for label in labels]}
            for p, r in zip(chunk, results)
        ]
        journal.append(records)
        done.update({r["id"]: r["scores"] for r in records})
        finished = start + len(chunk)
        rate = finished / max(time.monotonic() - started, 1e-9)
        say(f"teacher labelled {finished}/{len(todo)} rows ({rate:.1f} rows/s)")
    return TeacherLabels(done, len(todo), reused, time.monotonic() - started)
