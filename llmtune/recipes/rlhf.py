"""The `rlhf` recipe: learn from human preferences."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmtune.recipes.common import Data, ModelRef, RecipeBase, Section, Training
from llmtune.recipes.finetune import MethodSpec


class PolicyGeneration(Section):
    """Sampling during policy optimisation and collection."""

    num_generations: int = Field(4, ge=2)
    """Responses sampled per prompt."""
    max_new_tokens: int = Field(64, ge=1)
    """Tokens per response."""
    temperature: float = Field(1.0, gt=0.0)
    """Sampling temperature."""


class RlhfRecipe(RecipeBase):
    """Reward model, policy optimisation (GRPO/RLOO), DPO/KTO, or collecting responses to rank."""

    kind: Literal["rlhf"] = "rlhf"
    """Which job this recipe is for."""
    stage: Literal["reward", "policy", "dpo", "kto", "collect"]
    """reward | policy | dpo | kto | collect."""
    model: ModelRef
    """The policy (or, for stage reward, the reward model's base)."""
    method: MethodSpec = Field(default_factory=lambda: MethodSpec(type="lora"))
    """How the model is adapted."""
    data: Data
    """Preference pairs (prompt, chosen, rejected), rankings (prompt, responses, ranking) or prompts."""
    reward_model: ModelRef | None = None
    """stage policy: the trained reward model."""
    algorithm: Literal["grpo", "rloo"] = "grpo"
    """stage policy: the online algorithm."""
    beta: float = Field(0.1, ge=0.0)
    """Strength of the KL penalty to the reference model."""
    generation: PolicyGeneration = Field(default_factory=PolicyGeneration)
    """Sampling for stages policy and collect."""
    training: Training = Field(default_factory=Training)
    """Optimisation settings."""

    @model_validator(mode="after")
    def _reward_for_policy(self) -> RlhfRecipe:
        if self.stage == "policy" and self.reward_model is None:
            raise ValueError("stage: policy needs reward_model")
        return self
