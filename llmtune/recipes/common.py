"""Recipe pieces shared by several kinds: model references, data, training, output (the paths they
hold are `llmtune.recipes.paths`).

Every field's docstring is its documentation: it becomes the description in `llmtune schema`
and the comment in `llmtune init`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llmtune.recipes.paths import ModelPath, RecipePath

CANONICAL_FIELDS = (
    "id",
    "text",
    "label",
    "prompt",
    "completion",
    "messages",
    "chosen",
    "rejected",
    "responses",
    "ranking",
    "human_score",
)


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, docstrings document fields."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ScratchModel(Section):
    """A small model built from scratch, with a tokenizer that needs no download."""

    architecture: Literal["llama", "gpt2", "bert"] = "llama"
    """Model family of the randomly initialised network."""
    hidden_size: int = Field(64, ge=8)
    """Width of the hidden states."""
    num_layers: int = Field(2, ge=1)
    """Number of transformer blocks."""
    num_heads: int = Field(4, ge=1)
    """Attention heads per block; must divide hidden_size."""
    intermediate_size: int | None = Field(None, ge=8)
    """Width of the MLP; default 4 x hidden_size."""
    max_position_embeddings: int = Field(512, ge=16)
    """Longest sequence the model accepts."""
    tokenizer: Literal["byte", "train"] = "byte"
    """byte: byte-level, 256 symbols; train: a BPE tokenizer trained on the recipe's training text."""
    vocab_size: int = Field(2000, ge=300)
    """Vocabulary size of a trained tokenizer (tokenizer: train)."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ScratchModel:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")
        return self


class ModelRef(Section):
    """Which model to load: a hub id, a local directory, or a small model built from scratch."""

    path: ModelPath | None = None
    """Hub id (resolved from the local Hugging Face cache when offline) or a local directory
    (relative to this file)."""
    revision: str = "main"
    """Branch, tag or commit of a hub model."""
    adapter: RecipePath | None = None
    """A PEFT adapter directory applied on top of the model (relative to this file)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype; auto: bfloat16 on GPUs that support it, float32 on CPU."""
    device: str = "auto"
    """Where the model runs: auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """Attention kernel; flash_attention_2 needs a CUDA GPU and the flash-attn package."""
    quantization: Literal["none", "4bit", "8bit", "int8"] = "none"
    """4bit / 8bit: load the base weights quantized with bitsandbytes (CUDA only). int8: CPU
    inference (device auto means the CPU) with dynamic int8 linear layers (torch): less work per
    row; not for training. Labels can flip on rows near the decision boundary: compare with the
    float model on your data first (bench/bench_int8.py)."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub repo. Off unless you trust the repo."""
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """CPU threads for torch when the model runs on the CPU. auto: the environment's choice when
    LLMTUNE_THREADS or OMP_NUM_THREADS is set, else the cores this process may use less the ones
    other processes keep busy (1-minute load average), at least 1. On a shared machine one thread
    too many costs far more than one too few."""
    scratch: ScratchModel | None = None
    """Instead of path: build a small random model (tests, demos, students)."""

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return value

    @model_validator(mode="after")
    def _path_or_scratch(self) -> ModelRef:
        if (self.path is None) == (self.scratch is None):
            raise ValueError("give exactly one of path or scratch")
        return self

    @field_validator("quantization")
    @classmethod
    def _int8_on_cpu(cls, value: str, info: ValidationInfo) -> str:
        # a field validator (device and dtype come first), so the error names model.quantization
        device, dtype = info.data.get("device", "auto"), info.data.get("dtype", "auto")
        if value == "int8" and device not in ("auto", "cpu"):
            raise ValueError(f"int8 is CPU inference, not device {device}; on CUDA use 8bit or 4bit")
        if value == "int8" and dtype not in ("auto", "float32"):
            raise ValueError(f"int8 computes in float32; remove dtype: {dtype}")
        return value

    def describe(self) -> str:
        """A short human name for tables and logs."""
        if self.scratch is not None:
            s = self.scratch
            return f"scratch-{s.architecture}-{s.hidden_size}x{s.num_layers}"
        return self.path + (f" + {self.adapter}" if self.adapter else "")


class Split(Section):
    """Fractions carved from train when a split is not given as a file."""

    validation: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of train rows held out for validation (early stopping, model selection: both need
    30 rows or more, else the last step's model is kept)."""
    test: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of train rows held out for the final test."""
    seed: int = 42
    """Seed of the shuffle; the split is stratified by label when rows have labels."""

    @model_validator(mode="after")
    def _fractions_below_one(self) -> Split:
        if self.validation + self.test >= 1.0:
            raise ValueError("validation + test must be below 1 so that rows are left to train on")
        return self


Files = RecipePath | list[RecipePath]


class Data(Section):
    """Where rows come from and how they become model inputs."""

    train: Files | None = None
    """File, glob or list (relative to this file): .jsonl .json .csv .tsv .parquet .txt, or a
    datasets save_to_disk folder."""
    validation: Files | None = None
    """Validation rows; when absent they are carved from train by `split`."""
    test: Files | None = None
    """Test rows; when absent they are carved from train by `split`."""
    split: Split | None = None
    """Carve validation/test from train when they are not given as files."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Canonical field -> column name in your files, when they differ, e.g. {id: review_id,
    text: review, label: sentiment}. Fields: id (the row id, kept in predictions), text, label,
    prompt, completion, messages, chosen, rejected, responses, ranking, human_score (prompt-eval's
    judge: a person's score of the completion)."""
    template: str | None = None
    """Sandboxed Jinja2 template over the row's fields that builds the model input."""
    max_length: int = Field(512, ge=8)
    """Longest input in tokens; longer inputs are truncated."""
    limit: int | None = Field(None, ge=1)
    """Use only the first N rows of each split."""
    skip_bad_rows: bool = False
    """Skip (and count) rows that cannot be read instead of refusing the data."""

    @field_validator("columns")
    @classmethod
    def _canonical_names(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = [k for k in value if k not in CANONICAL_FIELDS]
        if unknown:
            raise ValueError(
                f"unknown canonical field(s) {unknown}; expected some of {', '.join(CANONICAL_FIELDS)}"
            )
        return value


# a validation split smaller than this cannot choose a checkpoint: with 6 rows one row moves
# accuracy by 17 points, so "best" is whichever evaluation got lucky (docs/first-hour.md)
MIN_VALIDATION_ROWS = 30


class EarlyStopping(Section):
    """Stop when the validation metric stops improving."""

    patience: int = Field(3, ge=1)
    """Evaluations without improvement before stopping."""
    metric: str = "eval_loss"
    """Metric watched on the validation split (eval_loss, eval_accuracy, eval_f1, ...)."""
    min_rows: int = Field(MIN_VALIDATION_ROWS, ge=1)
    """Validation rows needed to stop early or keep the best checkpoint: on fewer, one row is
    several points of the metric, so the run trains its full length, keeps the last step's model
    and says so. Lower it only if you accept choosing on noise."""


class Training(Section):
    """Optimisation settings (the HF Trainer's, under their usual names)."""

    epochs: Annotated[float, Field(gt=0)] | Literal["auto"] = "auto"
    """Passes over the training rows. auto: enough passes for about 100 optimizer steps (at
    least 3, at most 50), so that a small data set is learnt too."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_size: int = Field(16, ge=1)
    """Rows per device per step."""
    grad_accum: int = Field(1, ge=1)
    """Gradient accumulation steps."""
    learning_rate: Annotated[float, Field(gt=0)] | Literal["auto"] = "auto"
    """Peak learning rate. auto: by method and task (full fine-tuning 5e-5, or 2e-5 for causal_lm;
    last_layers 1e-4; lora, dora, adapter 1e-3, or 2e-4 for causal_lm; ia3 5e-3; prefix and
    prompt tuning 1e-2)."""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule."""
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of steps spent warming up the learning rate."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on GPUs that support it, fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Trade compute for memory by recomputing activations."""
    packing: bool = False
    """causal_lm: pack several short examples into one sequence."""
    eval_steps: int | None = Field(None, ge=1)
    """Evaluate on validation every N steps (default: every epoch)."""
    early_stopping: EarlyStopping | None = None
    """Stop early on the validation metric (needs a validation split)."""
    logging_steps: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """Log loss and learning rate every N steps. auto: about 20 lines over the run."""
    save_total_limit: int = Field(2, ge=1)
    """Checkpoints kept for --resume."""
    keep_checkpoints: Literal["none", "last", "all"] = "none"
    """What stays in checkpoints/ once a run has completed and saved model/ (--resume never
    continues a completed run): none frees the space; last keeps the newest checkpoint (to train
    on from it by hand); all keeps everything. Checkpoints of runs that stop early always stay."""
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(default_factory=list)
    """Experiment trackers that receive the loss and metrics (the HF Trainer's integrations):
    tensorboard writes to <run>/tensorboard, mlflow to <run>/mlruns unless MLFLOW_TRACKING_URI is
    set; wandb and trackio follow their own settings (WANDB_MODE=offline works without a network)."""


class Output(Section):
    """Where the run directory goes."""

    dir: RecipePath = RecipePath("runs/{name}")
    """Run directory, relative to this file; {name} (the run name) and {date} (YYYY-MM-DD) are
    filled in."""
    overwrite: bool = False
    """Replace an existing finished run in dir (never done otherwise)."""

    @field_validator("dir")
    @classmethod
    def _only_name_and_date(cls, value: RecipePath) -> RecipePath:
        if not value.strip():
            raise ValueError("expected a folder for the run, e.g. runs/{name}")
        for match in re.finditer(r"\{[^{}]*\}|[{}]", value):
            if match.group(0) not in ("{name}", "{date}"):
                raise ValueError(
                    f"{match.group(0)!r} is not a placeholder; only {{name}} and {{date}} are filled in, "
                    "and other braces are not allowed"
                )
        return value


class RecipeBase(Section):
    """Keys every recipe has."""

    kind: str
    """Which job this recipe is for."""
    name: str | None = None
    """Run name; default: the recipe file's stem."""
    seed: int = 42
    """Seed for shuffling, initialisation and sampling."""
    output: Output = Field(default_factory=Output)
    """Where the run directory goes."""

    _source: Path | None = PrivateAttr(None)

    def attach_source(self, path: Path) -> None:
        """Remember the recipe file: relative paths resolve against its folder."""
        self._source = path
        if self.name is None:
            self.name = path.stem

    @property
    def source(self) -> Path | None:
        """The recipe file this was loaded from (None when built in code)."""
        return self._source

    def as_written(self, where: Any) -> Any:
        """A row's `file:line` with the file as the recipe names it (relative to the recipe's
        folder when it lies there), not the absolute path it was read from; other values as they are."""
        if not isinstance(where, str) or self._source is None or not os.path.isabs(where):
            return where
        folder = self._source.parent.resolve()
        path = Path(where.rsplit(":", 1)[0])
        if not path.is_relative_to(folder):
            return where
        return os.path.relpath(where, folder)

    def resolve_path(self, value: str) -> Path:
        """A path written in the recipe, as an absolute path: relative ones are relative to the
        recipe file's folder (inherited ones were rebased onto it by the loader)."""
        path = Path(value).expanduser()
        if path.is_absolute() or self._source is None:
            return path
        # the folder is resolved first so that `..` means what it means to the OS even when the
        # folder is reached through a symlink; the rest is normalised for readable messages
        return Path(os.path.normpath(self._source.parent.resolve() / path))
