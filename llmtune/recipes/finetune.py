"""The `finetune` recipe: adapt a model on task examples."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmtune.recipes.common import Data, ModelRef, RecipeBase, Section, Training

Method = Literal["full", "lora", "qlora", "dora", "ia3", "prefix", "prompt", "last_layers"]
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")
CAUSAL_LM_METRICS = ("exact_match", "perplexity")


class MethodSpec(Section):
    """Which weights train: all of them, an adapter, virtual tokens, or the top layers."""

    type: Method = "lora"
    """full | lora | qlora | dora | ia3 | prefix | prompt | last_layers."""
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
        return self

    def metric_names(self) -> list[str]:
        """Metrics to report on the test split."""
        if self.evaluation.metrics:
            return list(self.evaluation.metrics)
        return list(CLASSIFICATION_METRICS if self.task == "classification" else CAUSAL_LM_METRICS)
