"""The `prompt-eval` recipe: zero-, one- and few-shot prompts and models on a labelled set."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmtune.recipes.common import Data, ModelRef, RecipeBase, Section


class PromptSpec(Section):
    """One way of asking the model."""

    template: str
    """Sandboxed Jinja2 template; {{ examples }} receives the rendered shots."""
    shots: int = Field(0, ge=0)
    """Examples put in front of each row (0: zero-shot)."""
    examples_from: str | None = None
    """File of example rows; default: the train split."""
    example_template: str = "{{ text }} {{ label }}\n\n"
    """How one example is rendered."""
    selection: Literal["first", "random", "balanced"] = "balanced"
    """How examples are chosen (seeded; never the row being scored)."""
    chat: bool = False
    """Give chat models the examples as user/assistant turns."""

    @model_validator(mode="after")
    def _examples_slot(self) -> PromptSpec:
        if self.shots > 0 and not self.chat and "examples" not in self.template:
            raise ValueError("shots > 0 but the template has no {{ examples }} slot")
        return self


class PromptEvalRecipe(RecipeBase):
    """Compare prompts and models on the same labelled rows, side by side."""

    kind: Literal["prompt-eval"] = "prompt-eval"
    """Which job this recipe is for."""
    models: dict[str, ModelRef]
    """Models to compare, by name (base, base + adapter, another model)."""
    data: Data
    """The labelled test rows (data.test, or carved from data.train by split)."""
    labels: list[str] | None = None
    """Label names; inferred from the data when omitted."""
    prompts: dict[str, PromptSpec]
    """Prompts to compare, by name."""
    scoring: Literal["choices", "generate"] = "choices"
    """choices: log-likelihood of each label; generate: greedy text matched to a label."""
    answer_pattern: str | None = None
    """generate: regex whose first group (or whole match) is the answer."""
    max_new_tokens: int = Field(16, ge=1)
    """generate: tokens generated per row."""
    metrics: list[str] = Field(default_factory=lambda: ["accuracy", "precision", "recall", "f1"])
    """Metrics to report."""

    @model_validator(mode="after")
    def _non_empty(self) -> PromptEvalRecipe:
        if not self.models:
            raise ValueError("models needs at least one entry")
        if not self.prompts:
            raise ValueError("prompts needs at least one entry")
        return self
