"""The `finetune` recipe: adapt a model on task examples."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from llmtune.recipes.common import Data, ModelRef, RecipeBase, Section, TemplateSource, Training

Method = Literal["full", "lora", "qlora", "dora", "ia3", "prefix", "prompt", "last_layers"]
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")
CAUSAL_LM_METRICS = ("exact_match", "perplexity")
PROMPT_LEARNING = ("prefix", "prompt")
MERGEABLE = ("lora", "qlora", "dora", "ia3")


class MethodSpec(Section):
    """Which weights train: all of them, an adapter, virtual tokens, or the top layers."""

    type: Method = "lora"
    """full (every weight), lora, qlora (LoRA on a 4-bit base), dora, ia3, prefix, prompt (trained
    virtual tokens) or last_layers (only the top blocks and the head)."""
    r: int = Field(16, ge=1)
    """LoRA/DoRA rank."""
    alpha: int = Field(32, ge=1)
    """LoRA/DoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the adapter's input."""
    target_modules: str | list[str] = "all-linear"
    """Modules that get adapters: all-linear, or a list of module names."""
    num_virtual_tokens: int = Field(20, ge=1)
    """Prefix / prompt tuning: number of trained virtual tokens."""
    init_text: str | None = None
    """Prompt tuning: initialise the soft prompt from this text."""
    layers: int = Field(2, ge=1)
    """last_layers: train only the top N blocks and the head."""


class Evaluation(Section):
    """Metrics computed on the test split at the end."""

    metrics: list[str] | None = None
    """classification: accuracy, precision, recall, f1; causal_lm: exact_match, perplexity."""
    max_new_tokens: int = Field(32, ge=1)
    """causal_lm exact match: tokens generated per test prompt."""


class Export(Section):
    """What to write to model/ besides the adapter."""

    merge_adapter: bool = False
    """Merge a LoRA adapter into the base weights and save a standalone model."""


class Range(Section):
    """A continuous range sampled by a random sweep."""

    low: float
    """Smallest value."""
    high: float
    """Largest value."""
    log: bool = False
    """Sample on a log scale (learning rates)."""

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low >= self.high or (self.log and self.low <= 0):
            raise ValueError("expected low < high (and low > 0 with log: true)")
        return self


class Sweep(Section):
    """Hyperparameter search: each trial is a run; the best on the validation metric wins."""

    strategy: Literal["grid", "random"] = "grid"
    """grid: every combination of the values; random: `trials` samples."""
    params: dict[str, list[Any] | Range]
    """Recipe key (dotted, as for --set) -> values to try, or {low, high, log} for random search."""
    trials: int | None = Field(None, ge=1)
    """random: number of trials (default 8); grid: run at most this many combinations."""
    metric: str | None = None
    """Validation metric to optimise (default: training.early_stopping.metric, else eval_loss)."""
    seed: int = 0
    """Seed of the random sampler."""

    @field_validator("params")
    @classmethod
    def _searchable(cls, params: dict[str, list[Any] | Range], info: ValidationInfo) -> dict:
        if not params:
            raise ValueError("params needs at least one key to search")
        for key, values in params.items():
            if isinstance(values, Range) and info.data.get("strategy") == "grid":
                raise ValueError(f"{key}: a {{low, high}} range needs strategy: random; give a list for grid")
            if isinstance(values, list) and not values:
                raise ValueError(f"{key}: give at least one value")
        return params


class FinetuneRecipe(RecipeBase):
    """Adapt a model on task examples: classification head or causal-LM SFT."""

    kind: Literal["finetune"] = "finetune"
    """Which job this recipe is for."""
    task: Literal["classification", "causal_lm"] = "classification"
    """classification: a head with N labels; causal_lm: supervised fine-tuning of a language model."""
    model: ModelRef
    """The model to adapt."""
    labels: list[str] | None = None
    """classification: the label names in order; inferred from train when omitted."""
    method: MethodSpec = Field(default_factory=MethodSpec)
    """How the model is adapted."""
    data: Data
    """Training, validation and test rows."""
    training: Training = Field(default_factory=Training)
    """Optimisation settings."""
    evaluation: Evaluation = Field(default_factory=Evaluation)
    """Final evaluation on the test split."""
    export: Export = Field(default_factory=Export)
    """What is written to model/."""
    chat_template: TemplateSource | None = None
    """causal_lm messages rows: a Jinja chat template when the tokenizer has none; the template
    text, or a .jinja / .j2 file relative to this file."""
    sweep: Sweep | None = None
    """Search hyperparameters instead of one run (same as --sweep FILE)."""

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneRecipe:
        if self.data.train is None:
            raise ValueError("data.train is required for finetune")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if self.labels is not None and len(self.labels) < 2:
            raise ValueError("labels needs at least two entries")
        if self.task == "causal_lm" and self.labels:
            raise ValueError("labels are for task: classification, not causal_lm")
        allowed = CLASSIFICATION_METRICS if self.task == "classification" else CAUSAL_LM_METRICS
        bad = [m for m in self.evaluation.metrics or [] if m not in allowed]
        if bad:
            raise ValueError(
                f"evaluation.metrics {bad} do not apply to task {self.task}; "
                f"expected some of {', '.join(allowed)}"
            )
        if self.method.type == "qlora" and self.model.quantization == "8bit":
            raise ValueError("qlora loads the base in 4bit; remove model.quantization: 8bit")
        if self.method.init_text and self.method.type != "prompt":
            raise ValueError("method.init_text is only for method.type: prompt")
        self._check_training()
        if self.export.merge_adapter and self.method.type not in MERGEABLE:
            raise ValueError(
                f"export.merge_adapter: a {self.method.type} model has no adapter to merge; "
                f"merging works for {', '.join(MERGEABLE)}"
            )
        return self

    def _check_training(self) -> None:
        training = self.training
        if training.packing and self.task != "causal_lm":
            raise ValueError("training.packing is for task: causal_lm")
        if training.packing and self.method.type in PROMPT_LEARNING:
            raise ValueError(
                f"training.packing does not work with method {self.method.type}: the virtual tokens are "
                "prepended once per sequence, so packed examples would share them"
            )
        if training.early_stopping is not None:
            if not self.has_validation():
                raise ValueError(
                    "training.early_stopping needs validation rows: set data.validation or data.split.validation"
                )
            training.early_stopping.metric = self.validation_metric(training.early_stopping.metric)

    def has_validation(self) -> bool:
        """Whether the recipe gives or carves validation rows."""
        return self.data.validation is not None or bool(self.data.split and self.data.split.validation)

    def validation_metric(self, name: str) -> str:
        """`name` as the Trainer logs it (eval_ prefix), refused when this task does not compute it."""
        name = name if name.startswith("eval_") else f"eval_{name}"
        allowed = ["eval_loss"]
        if self.task == "classification":
            allowed += [f"eval_{m}" for m in CLASSIFICATION_METRICS]
        if name not in allowed:
            raise ValueError(
                f"validation metric {name!r} is not computed for {self.task}; expected one of {allowed}"
            )
        return name

    def metric_names(self) -> list[str]:
        """Metrics to report on the test split."""
        if self.evaluation.metrics:
            return list(self.evaluation.metrics)
        return list(CLASSIFICATION_METRICS if self.task == "classification" else CAUSAL_LM_METRICS)
