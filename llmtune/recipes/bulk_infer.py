"""The `bulk-infer` recipe: offline inference over large files, safe to run from cron."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llmtune.recipes.common import ModelRef, RecipeBase, Section
from llmtune.recipes.engines import EngineName, RaySettings, VllmSettings


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
    chunk_rows: int = Field(256, ge=1)
    """Rows handed to the engine at a time; each chunk's results are appended and flushed before
    the next starts, so a crash loses at most one chunk. Larger chunks sort by length better."""


class OutputFiles(Section):
    """Where results and failed rows go."""

    path: str
    """Results file; jsonl, csv or parquet by extension. Rows are appended to a JSONL journal
    (the file itself for .jsonl, else <stem>.journal.jsonl beside it) that resume reads; a csv
    or parquet file is written from the journal at the end of each run."""
    errors: str | None = None
    """Failed rows of the latest run, with their id, file:line and reason; default: <path
    stem>.errors.jsonl. Replaced as a whole when a run ends (never truncated in place). No output
    file may be an input file or another output file (exit 2)."""
    include_input: bool = False
    """Copy the input columns into each output row."""

    @field_validator("path")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if Path(value).suffix.lower() not in (".jsonl", ".csv", ".parquet"):
            raise ValueError(f"expected a .jsonl, .csv or .parquet file, got {value!r}")
        return value

    @field_validator("errors")
    @classmethod
    def _errors_jsonl(cls, value: str | None) -> str | None:
        if value is not None and Path(value).suffix.lower() != ".jsonl":
            raise ValueError(f"the errors file is JSON lines: expected a .jsonl file, got {value!r}")
        return value


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
    task: Literal["generate", "classify", "score"] = "generate"
    """generate: text; classify: a label plus a probability per label (soft labels); score: the
    number a regression head predicts (a model from `llmtune finetune` with task: regression)."""
    labels: list[str] | None = None
    """classify: the label names (scored by log-likelihood, or the model's classification head).
    Omitted with a classification head: the model's own names (its config's id2label); names that
    are not the head's are refused at --dry-run."""
    generation: Generation = Field(default_factory=Generation)
    """Decoding settings for task: generate."""
    batching: Batching = Field(default_factory=Batching)
    """Batch sizes and token budget."""
    engine: EngineName = "hf"
    """hf: transformers in this process; vllm: vLLM's offline LLM (pip install 'llmtune[vllm]');
    ray: model replicas in a Ray Data actor pool (pip install 'llmtune[ray]'); onnx: ONNX Runtime
    on an export folder, or the model exported once into a cache (classify, score; pip install
    'llmtune[onnx]'); llamacpp: llama.cpp on a GGUF file (generate; pip install
    'llmtune[llamacpp]'). Same rows, same resume, lock, errors file and exit codes."""
    ray: RaySettings = Field(default_factory=RaySettings)
    """engine: ray settings (a cluster address, replicas)."""
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    """engine: vllm settings."""
    max_length: int = Field(2048, ge=8)
    """Longest prompt in tokens."""
    on_too_long: Literal["truncate", "skip", "error"] = "truncate"
    """A prompt over max_length: cut it (causal LMs keep its end, classifiers its start, as in
    training), skip the row, or record it as an error."""
    on_duplicate: Literal["error", "first"] = "error"
    """Two input rows with one id (ids keep their type: 1 and "1" are two ids) and different
    content: error refuses the input (exit 2, naming both rows' file:line); first keeps the first
    row and counts the others as rows_duplicate. An exact copy of a row is always counted, not run."""
    output: OutputFiles  # type: ignore[assignment]
    """Where results and failed rows go."""

    @model_validator(mode="after")
    def _labels_for_classify(self) -> BulkInferRecipe:
        if self.task != "classify" and self.labels:
            raise ValueError(f"labels are for task: classify, not {self.task}")
        if self.system and not self.chat:
            raise ValueError("system is only used with chat: true")
        if self.generation.num_return_sequences > 1 and self.generation.temperature == 0:
            raise ValueError(
                "generation.num_return_sequences > 1 needs sampling (temperature > 0); "
                "greedy decoding returns the same text every time"
            )
        if self.labels and len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be distinct")
        return self

    def prompt_fingerprint(self) -> str:
        """Changes when anything that shapes the prompt or the decoding changes (kept beside the
        fields, so that a new field that shapes the prompt is added here too)."""
        parts: dict[str, Any] = {
            "template": self.template,
            "columns": self.input.columns,
            "chat": self.chat,
            "system": self.system,
            "task": self.task,
            "max_length": self.max_length,
            "on_too_long": self.on_too_long,
        }
        if self.task == "classify":
            parts["labels"] = self.labels
        elif self.task == "generate":
            parts["generation"] = self.generation.model_dump()
            if self.generation.temperature > 0:
                parts["seed"] = self.seed
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
