"""The method vocabulary: which weights a job trains (`method:` of finetune and rlhf), read by
the models that apply it and by the exports that merge it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmtune.recipes.common import Section

Method = Literal["full", "lora", "qlora", "dora", "ia3", "prefix", "prompt", "last_layers", "adapter"]
PROMPT_LEARNING = ("prefix", "prompt")
"""Methods that train virtual tokens prepended to every sequence."""
MERGEABLE = ("lora", "qlora", "dora", "ia3")
"""Methods whose adapter can be merged into the base weights."""


class MethodSpec(Section):
    """Which weights train: all of them, an adapter, virtual tokens, or the top layers."""

    type: Method = "lora"
    """full (every weight), lora, qlora (LoRA on a 4-bit base), dora, ia3, prefix, prompt (trained
    virtual tokens), last_layers (only the top blocks and the head) or adapter (bottleneck adapter
    layers in every block: reduction_factor, placement, sites, non_linearity, scaling)."""
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
    reduction_factor: int = Field(16, ge=1)
    """adapter: bottleneck width = hidden size / reduction_factor."""
    placement: Literal["serial", "parallel"] = "serial"
    """adapter: serial (after a block's output, Houlsby / Pfeiffer) or parallel (beside the
    feed-forward block, He et al.)."""
    sites: list[Literal["attention", "feed_forward"]] = Field(default_factory=lambda: ["feed_forward"])
    """adapter, serial: after which outputs of each block: [feed_forward] is Pfeiffer's placement,
    [attention, feed_forward] Houlsby's. parallel adapters sit beside the feed-forward block."""
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    """adapter: activation between the down- and up-projection."""
    scaling: float = Field(1.0, gt=0)
    """adapter: the adapter's output is multiplied by this before it is added back."""
    stack: bool = False
    """model.path is an earlier run's adapter (LoRA family or adapter layers): false continues
    training that adapter; true freezes it (merged into the base when it can be) and trains a new
    one on top."""

    @field_validator("sites")
    @classmethod
    def _some_sites(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("expected one or both of attention, feed_forward, each once")
        return value

    @model_validator(mode="after")
    def _parallel_beside_feed_forward(self) -> MethodSpec:
        if self.placement == "parallel" and "attention" in self.sites:
            raise ValueError(
                "placement: parallel puts the adapter beside the feed-forward block; sites [attention, ...] "
                "is for placement: serial (Houlsby)"
            )
        return self
