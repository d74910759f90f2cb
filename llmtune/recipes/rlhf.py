"""The `rlhf` recipe: learn from human preferences.

One recipe kind, five stages: `collect` (sample outputs to rank), `reward` (a reward model learns
people's rankings), `policy` (GRPO/RLOO against the reward model and rule rewards), `dpo` and `kto`
(offline preference optimisation).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmtune.recipes.common import Data, ModelRef, Output, RecipeBase, Section, Training
from llmtune.recipes.distributed import Distributed
from llmtune.recipes.engines import VllmSettings
from llmtune.recipes.methods import MethodSpec

Stage = Literal["reward", "policy", "dpo", "kto", "collect"]


class RlhfData(Data):
    """Where rows come from; rankings may hold several people's answers (`rankings`)."""

    aggregate: Literal["all", "majority", "mean_rank"] = "all"
    """reward, dpo, kto: how rows ranked by several people (`rankings: {alice: "A > B", bob:
    "B > A"}`) are combined. all: every annotator's pairs are kept (people who agree count twice;
    a disagreement gives both directions). majority: a pair is kept when more than half of the
    row's annotators order it that way (a tie is a vote for neither). mean_rank: the responses
    are ordered by their mean position over the annotators (equal means tie). A ranking that
    ties every response gives nothing in every mode (counted)."""


class PolicyGeneration(Section):
    """Sampling: the K outputs per prompt of stage collect, and the policy's group during policy."""

    num_generations: int = Field(4, ge=2, le=26)
    """Outputs sampled per prompt (collect: lettered A, B, C...; policy: the GRPO/RLOO group)."""
    max_new_tokens: int = Field(64, ge=1)
    """Tokens per output."""
    temperature: float = Field(1.0, gt=0.0)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = Field(0, ge=0)
    """Sample only among the k most likely tokens (0: no limit)."""


class RuleReward(Section):
    """A reward computed by a rule, mixed with the reward model's score by weight. Rules are data,
    never code: a recipe cannot import anything."""

    type: Literal["length", "regex"]
    """length: minus the share by which an output is longer than `target` characters (0 when it
    is not longer); regex: 1 when the output meets `pattern`'s rule, else 0."""
    weight: float = 1.0
    """Weight of this reward in the sum (negative weights penalise)."""
    target: int | None = Field(None, ge=1)
    """length: the longest output, in characters, that is not penalised."""
    pattern: str | None = None
    """regex: a regular expression searched for in the output (RE2 syntax, Python's without
    backreferences and lookaround: it runs in time linear in the output, never spins)."""
    must_match: bool = True
    """regex: true rewards outputs that contain a match; false rewards outputs that contain none."""

    @model_validator(mode="after")
    def _fields_of_type(self) -> RuleReward:
        if self.type == "length" and self.target is None:
            raise ValueError("a length reward needs target (characters)")
        if self.type == "regex":
            if not self.pattern:
                raise ValueError("a regex reward needs pattern")
            from llmtune.recipes.patterns import compile_pattern

            compile_pattern(self.pattern)  # RE2: linear time; ValueError names what it cannot run
        return self


class RlhfOutput(Output):
    """Where the run directory goes."""

    replace_rankings: bool = False
    """stage collect: replace a candidates.jsonl that holds people's rankings (they are lost).
    Without it such a run is refused: move the file away, or rank into another file with
    `llmtune rank CANDIDATES --output FILE`."""


class RlhfRecipe(RecipeBase):
    """Reward model, policy optimisation (GRPO/RLOO), DPO/KTO, or collecting outputs to rank."""

    kind: Literal["rlhf"] = "rlhf"
    """Which job this recipe is for."""
    stage: Stage
    """collect (sample outputs for people to rank), reward (train a reward model on pairs or
    rankings), policy (GRPO/RLOO against the reward model), dpo or kto (offline)."""
    model: ModelRef
    """The policy (stages collect, policy, dpo, kto) or the reward model's base (stage reward)."""
    method: MethodSpec = Field(default_factory=lambda: MethodSpec(type="lora"))
    """How the model is adapted (as in finetune). A LoRA reward model also saves its score head."""
    data: RlhfData
    """reward and dpo: pairs (prompt, chosen, rejected) or rankings (prompt, responses, ranking);
    kto: unpaired rows (prompt, completion, label true/false) or rankings; collect and policy:
    prompts (prompt, or a template)."""
    reward_model: ModelRef | None = None
    """policy: the trained reward model (it may have another tokenizer than the policy); dpo and
    kto: optional, to report the mean reward before and after on the test prompts."""
    reward_weight: float = 1.0
    """policy: weight of the reward model's score in the total reward."""
    rewards: list[RuleReward] = Field(default_factory=list)
    """policy: rule rewards added to the reward model's score, e.g. [{type: length, target: 200,
    weight: 0.5}, {type: regex, pattern: "(?i)sorry", must_match: false}]."""
    algorithm: Literal["grpo", "rloo"] = "grpo"
    """policy: the online algorithm (TRL's GRPOTrainer or RLOOTrainer)."""
    beta: float = Field(0.1, ge=0.0)
    """policy: weight of the KL penalty to the reference model; dpo/kto: their beta (how far the
    policy may move from the reference)."""
    margin: Literal["none", "rank_distance"] = "none"
    """reward, from rankings: none (every strictly ordered pair counts the same) or rank_distance
    (the pair's margin is how many tiers apart they are, so A far below C pushes harder)."""
    generation: PolicyGeneration = Field(default_factory=PolicyGeneration)
    """Sampling for stages collect and policy, and for the mean reward before and after."""
    training: Training = Field(default_factory=Training)
    """Optimisation settings (stage collect trains nothing)."""
    distributed: Distributed = Field(default_factory=Distributed)
    """Under torchrun / accelerate launch with several processes: ddp, fsdp or deepspeed."""
    engine: Literal["hf", "vllm"] = "hf"
    """stage collect: how outputs are sampled: hf (transformers, in this process) or vllm (vLLM's offline LLM; pip install
    'llmtune[vllm]')."""
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    """engine: vllm settings."""
    output: RlhfOutput = Field(default_factory=RlhfOutput)
    """Where the run directory goes."""

    @model_validator(mode="after")
    def _stage_needs(self) -> RlhfRecipe:
        if self.stage == "policy" and self.reward_model is None and not self.rewards:
            raise ValueError(
                "stage: policy needs something to optimise: reward_model, rewards (rule rewards), or both"
            )
        if self.rewards and self.stage != "policy":
            raise ValueError(f"rewards (rule rewards) are used by stage policy only, not {self.stage}")
        if self.data.aggregate != "all" and self.stage not in ("reward", "dpo", "kto"):
            raise ValueError(f"data.aggregate is used by stages reward, dpo and kto, not {self.stage}")
        if self.output.replace_rankings and self.stage != "collect":
            raise ValueError(f"output.replace_rankings is used by stage collect only, not {self.stage}")
        if self.margin != "none" and self.stage != "reward":
            raise ValueError(f"margin is used by stage reward only, not {self.stage}")
        return self
