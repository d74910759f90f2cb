"""The `bulk-infer` recipe: offline inference over large files, safe to run from cron."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmtune.recipes.common import ModelRef, RecipeBase, Section


class Input(Section):
    """Rows to run the model on."""

    path: str | list[str]
    """jsonl / csv / parquet file, glob or list of them."""
    id_column: str | None = None
    """Column holding a stable row id; default: a hash of the row's content."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Canonical field -> column in the files, e.g. {text: review}."""


class Generation(Section):
    """How text is generated (task: generate)."""

    max_new_tokens: int = Field(32, ge=1)
    """Tokens generated per row at most."""
    temperature: float = Field(0.0, ge=0.0)
    """0 is greedy decoding; above 0 samples."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling threshold."""
    top_k: int | None = Field(None, ge=1)
    """Sample only among the k most likely tokens."""
    stop: list[str] = Field(default_factory=list)
    """Cut the output at the first of these strings."""
    num_return_sequences: int = Field(1, ge=1)
    """Outputs per row (a list in the output when above 1)."""


class Batching(Section):
    """How rows are grouped into batches."""

    batch_size: int | Literal["auto"] = "auto"
    """Rows per batch; auto finds the largest that fits and backs off on out-of-memory."""
    max_batch_tokens: int = Field(16384, ge=16)
    """Token budget of one batch (prompt + generated tokens, padding included)."""


class OutputFiles(Section):
    """Where results and failed rows go."""

    path: str
    """Results file; jsonl, csv or parquet by extension."""
    errors: str | None = None
    """Failed rows with their id and reason; default: <path stem>.errors.jsonl."""
    include_input: bool = False
    """Copy the input columns into each output row."""


class BulkInferRecipe(RecipeBase):
    """Run a model over large files: resumable, batched, never losing or duplicating a row."""

    kind: Literal["bulk-infer"] = "bulk-infer"
    """Which job this recipe is for."""
    model: ModelRef
    """The model to run."""
    input: Input
    """Rows to run the model on."""
    template: str = "{{ text }}"
    """Sandboxed Jinja2 template over the row's fields that builds the prompt."""
    chat: bool = False
    """Apply the tokenizer's chat template to the prompt (as the user turn)."""
    system: str | None = None
    """System message for chat: true."""
    task: Literal["generate", "classify"] = "generate"
    """generate: text; classify: a label plus a probability per label (soft labels)."""
    labels: list[str] | None = None
    """classify: the label names (scored by log-likelihood, or the model's classification head)."""
    generation: Generation = Field(default_factory=Generation)
    """Decoding settings for task: generate."""
    batching: Batching = Field(default_factory=Batching)
    """Batch sizes and token budget."""
    max_length: int = Field(2048, ge=8)
    """Longest prompt in tokens."""
    on_too_long: Literal["truncate", "skip", "error"] = "truncate"
    """A prompt over max_length: cut it (from the left), skip the row, or record it as an error."""
    output: OutputFiles  # type: ignore[assignment]
    """Where results and failed rows go."""

    @model_validator(mode="after")
    def _labels_for_classify(self) -> BulkInferRecipe:
        if self.task == "classify" and not self.labels:
            raise ValueError("task: classify needs labels")
        if self.system and not self.chat:
            raise ValueError("system is only used with chat: true")
        return self
