"""Building zero-, one- and few-shot prompts: choosing examples from a pool and rendering them.

Examples are drawn per scored row with a seed made of the recipe seed, the prompt's name and the
row's key, so a run is reproducible and does not depend on the order of the rows. A pool row equal
to the row being scored (same id or same text) is never one of its examples.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from llmtune.data.readers import Rows
from llmtune.data.templates import Template
from llmtune.errors import BadInput
from llmtune.recipes.prompt_eval import PromptSpec

Row = dict[str, Any]
EXTRA_FIELDS = {"examples", "labels"}


def same_row(a: Row, b: Row) -> bool:
    """Whether two rows are the same example: same id, or same text (or identical rows)."""
    if a.get("id") is not None and a.get("id") == b.get("id"):
        return True
    if "text" in a and "text" in b:
        return a["text"] == b["text"]
    return a == b


def row_key(row: Row, index: int) -> str:
    """A stable key for a row's seed: its id, else its text, else its position."""
    for field in ("id", "text"):
        if row.get(field) is not None:
            return f"{field}:{row[field]}"
    return f"row:{index}"


@dataclass
class ExamplePicker:
    """Chooses `shots` examples from a pool for each scored row."""

    pool: Rows
    shots: int
    selection: str
    seed: str
    labels: list[str] | None

    def __post_init__(self) -> None:
        self._by_label: dict[str, list[int]] = {}
        if self.labels is not None:
            for i, row in enumerate(self.pool.rows):
                self._by_label.setdefault(str(row.get("label")), []).append(i)

    def pick(self, row: Row, key: str) -> list[Row]:
        """The examples for one row, in the order they appear in the prompt."""
        if self.shots == 0:
            return []
        if self.selection == "first":
            chosen = [i for i, ex in enumerate(self.pool.rows) if not same_row(ex, row)][: self.shots]
        else:
            rng = random.Random(f"{self.seed}|{key}")
            if self.selection == "balanced" and self._by_label:
                chosen = self._balanced(rng, row)
            else:
                chosen = self._draw(rng, list(range(len(self.pool))), self.shots, row)
        if len(chosen) < self.shots:
            raise BadInput(
                f"only {len(chosen)} pool rows differ from the row being scored ({key}); "
                f"{self.shots} shots were asked for"
            )
        return [self.pool.rows[i] for i in chosen]

    def _draw(self, rng: random.Random, candidates: list[int], k: int, row: Row) -> list[int]:
        """k distinct candidates, none equal to `row` (sampling a little extra to skip it)."""
        sample = rng.sample(candidates, min(len(candidates), k + 1))
        kept = [i for i in sample if not same_row(self.pool.rows[i], row)]
        if len(kept) < k:  # the row is in the pool more than once: filter the whole list
            rest = [i for i in candidates if i not in kept and not same_row(self.pool.rows[i], row)]
            kept += rng.sample(rest, min(len(rest), k - len(kept)))
        return kept[:k]

    def _balanced(self, rng: random.Random, row: Row) -> list[int]:
        """As many examples of each label as possible, the remainder spread over random labels."""
        assert self.labels is not None
        available = {
            label: [i for i in self._by_label.get(label, []) if not same_row(self.pool.rows[i], row)]
            for label in self.labels
        }
        quota = dict.fromkeys(self.labels, 0)
        order = list(self.labels)
        rng.shuffle(order)
        left = self.shots
        while left > 0:
            open_labels = [label for label in order if quota[label] < len(available[label])]
            if not open_labels:
                break
            for label in open_labels[:left]:
                quota[label] += 1
                left -= 1
        chosen = [i for label in self.labels for i in rng.sample(available[label], quota[label])]
        rng.shuffle(chosen)  # never all examples of one label, then all of the next
        return chosen


class PromptBuilder:
    """Renders one named prompt for each row: the examples, then the row."""

    def __init__(
        self,
        name: str,
        spec: PromptSpec,
        *,
        pool: Rows | None,
        pool_source: str,
        labels: list[str] | None,
        seed: int,
        recipe_file: str | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.labels = labels
        where = f"prompts.{name}"
        self.template = Template(spec.template, where=f"{where}.template")
        self.example_template = Template(spec.example_template, where=f"{where}.example_template")
        if spec.shots > 0:
            if pool is None or not pool.rows:
                raise BadInput(
                    f"{spec.shots} shots need an example pool: give {where}.examples_from or data.train",
                    key=f"{where}.shots",
                    file=recipe_file,
                )
            if spec.shots > len(pool):
                raise BadInput(
                    f"{spec.shots} shots asked for but the example pool ({pool_source}) has only "
                    f"{len(pool)} rows",
                    key=f"{where}.shots",
                    file=recipe_file,
                )
            fields = set(pool.rows[0])
            if spec.chat:
                self.template.check_fields(fields, file=pool.where[0], extra=EXTRA_FIELDS)
            else:
                self.example_template.check_fields(fields, file=pool.where[0], extra={"labels"})
        self.picker = ExamplePicker(
            pool or Rows(), spec.shots, spec.selection, seed=f"{seed}|{name}", labels=labels
        )

    def check(self, rows: Rows) -> None:
        """Refuse a template naming a field the scored rows lack (before any model loads)."""
        self.template.check_fields(set(rows.rows[0]), file=rows.where[0], extra=EXTRA_FIELDS)

    def _fill(self, row: Row, examples: str) -> str:
        return self.template.render({**row, "examples": examples, "labels": self.labels or []})

    def render(self, row: Row, index: int) -> str:
        """The full prompt text for one row (plain prompts)."""
        examples = self.picker.pick(row, row_key(row, index))
        shots = "".join(self.example_template.render({**ex, "labels": self.labels or []}) for ex in examples)
        return self._fill(row, shots)

    def messages(self, row: Row, index: int) -> list[dict[str, str]]:
        """The chat turns for one row: system, then each example as a user/assistant pair."""
        turns = [{"role": "system", "content": self.spec.system}] if self.spec.system else []
        for ex in self.picker.pick(row, row_key(row, index)):
            turns.append({"role": "user", "content": self._fill(ex, "")})
            turns.append({"role": "assistant", "content": str(ex["label"])})
        turns.append({"role": "user", "content": self._fill(row, "")})
        return turns


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]], model_name: str, prompt_name: str) -> str:
    """The chat turns rendered by the model's own chat template, ready for the reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise BadInput(
            f"prompt {prompt_name} has chat: true but model {model_name} has no chat template; "
            "use a chat/instruct model or chat: false",
            key=f"prompts.{prompt_name}.chat",
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
