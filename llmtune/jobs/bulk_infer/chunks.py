"""One chunk of bulk-infer rows through an engine: render the prompts (template, chat template,
too-long rows), run the task, and turn what came back into journal records and errors-file rows.
Every engine's driver goes through these (engine hf in the job's process, engine ray in each
replica), so the rows and the failures are the same whichever engine ran them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import llmtune.jobs.bulk_infer.files as bulk_io
from llmtune.console import say
from llmtune.data.templates import Template
from llmtune.errors import BadInput, Interrupted
from llmtune.inference.interface import InferenceEngine
from llmtune.inference.journal import signals_held
from llmtune.jobs.bulk_infer.inputs import InputRow
from llmtune.jobs.bulk_infer.paths import OutputPaths
from llmtune.jobs.bulk_infer.progress import Progress, Tally
from llmtune.recipes.bulk_infer import BulkInferRecipe


def render_prompts(
    recipe: BulkInferRecipe, engine: InferenceEngine, template: Template, chunk: list[InputRow], tally: Tally
) -> tuple[list[InputRow], list[str], list[dict[str, Any]]]:
    """Render each row's prompt; rows whose template fails or that are too long are set aside."""
    ready, prompts, failures = [], [], []
    for item in chunk:
        try:
            prompt = template.render(item.row)  # a missing or null field, a template limit: BadInput
            if not prompt.strip():
                raise BadInput("the prompt is empty", key="template")
            if recipe.chat:
                prompt = engine.apply_chat_template(prompt, recipe.system)
        except BadInput as exc:
            failures.append(failure(item, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - the model's chat template failed on this row
            failures.append(failure(item, f"chat template: {type(exc).__name__}: {exc}"))
            continue
        ready.append(item)
        prompts.append(prompt)
    if recipe.on_too_long == "truncate" or not prompts:
        return ready, prompts, failures
    kept_rows, kept_prompts = [], []
    for item, prompt, length in zip(ready, prompts, engine.count_tokens(prompts)):
        if length <= recipe.max_length:
            kept_rows.append(item)
            kept_prompts.append(prompt)
        elif recipe.on_too_long == "skip":
            tally.too_long_skipped += 1
        else:
            failures.append(failure(item, f"prompt is {length} tokens, over max_length {recipe.max_length}"))
    return kept_rows, kept_prompts, failures


def run_chunk(
    recipe: BulkInferRecipe, engine: InferenceEngine, rows: list[InputRow], prompts: list[str]
) -> tuple[list[tuple[InputRow, dict[str, Any]]], list[dict[str, Any]]]:
    """Results for a chunk; when the chunk fails as a whole, rows run one by one so that only
    the rows that fail by themselves go to the errors file."""
    try:
        return list(zip(rows, task_results(recipe, engine, prompts))), []
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - narrowed down to the failing rows below
        if len(rows) == 1:
            return [], [failure(rows[0], f"{type(exc).__name__}: {exc}")]
    done, failures = [], []
    for item, prompt in zip(rows, prompts):
        try:
            done.append((item, task_results(recipe, engine, [prompt])[0]))
        except Exception as exc:  # noqa: BLE001 - this row's failure, recorded with its reason
            failures.append(failure(item, f"{type(exc).__name__}: {exc}"))
    return done, failures


def task_results(
    recipe: BulkInferRecipe, engine: InferenceEngine, prompts: list[str]
) -> list[dict[str, Any]]:
    """The recipe's task over `prompts`, one result dict per prompt, in order."""
    if recipe.task == "score":
        return [{"score": score} for score in engine.score(prompts)]
    if recipe.task == "classify":
        assert recipe.labels is not None
        out = []
        for scores in engine.classify(prompts, recipe.labels):
            out.append({"label": max(scores, key=scores.__getitem__), "scores": scores})
        return out
    g = recipe.generation
    generations = engine.generate(
        prompts,
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        stop=g.stop,
        num_return_sequences=g.num_return_sequences,
        seed=recipe.seed,
    )
    return [
        {"output": gen.texts if g.num_return_sequences > 1 else gen.texts[0], "_new_tokens": gen.new_tokens}
        for gen in generations
    ]


def record(
    recipe: BulkInferRecipe, item: InputRow, result: dict[str, Any], fingerprints: dict[str, str]
) -> dict[str, Any]:
    """The journal row of one result: the id, the result (keys starting with _ are the run's
    own counts, not output), the fingerprints, and the input columns when asked for."""
    out: dict[str, Any] = {}
    if recipe.output.include_input:
        out.update(item.row)
    out["id"] = item.id
    out.update({k: v for k, v in result.items() if not k.startswith("_")})
    out.update(fingerprints)
    return out


def failure(item: InputRow, reason: str) -> dict[str, Any]:
    """The errors-file row of a row that failed: its id, file:line and the reason."""
    return {"id": item.id, "where": item.where, "reason": reason}


class Writer:
    """Where a run's results go as they come: journal rows and failures appended (flushed), the
    tally and the progress line advanced. Engine hf and the Ray driver both write through it."""

    def __init__(self, paths: OutputPaths, rows: int, tally: Tally) -> None:
        self.journal = bulk_io.result_file(paths.journal)
        self.errors = bulk_io.errors_file(paths.errors)  # this run's failures replace the last run's
        self.progress = Progress(rows)
        self.tally = tally

    def add(
        self, records: list[dict[str, Any]], failures: list[dict[str, Any]], *, rows: int, new_tokens: int
    ) -> None:
        """One chunk's output rows and failures (`rows`: the chunk's size, skipped rows included)."""
        self.journal.append(records)
        self.errors.append(failures)
        self.tally.done += len(records)
        self.tally.failed += len(failures)
        self.tally.new_tokens += new_tokens
        self.progress.advance(rows, self.tally.new_tokens)

    def close(self) -> None:
        with signals_held():  # a second signal must not cut the clean-up short
            self.progress.close()
            self.journal.close()
            self.errors.close()


@contextmanager
def writing(paths: OutputPaths, rows: int, tally: Tally) -> Iterator[Writer]:
    """A Writer for this run, closed however the run ends; a signal is reported with where the
    finished rows are."""
    writer = Writer(paths, rows, tally)
    try:
        yield writer
    except Interrupted:
        say(f"stopped after {tally.done} row(s) this run; they are in {paths.journal}")
        raise
    finally:
        writer.close()
