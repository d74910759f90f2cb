"""What the rlhf stages share: the reward model's score of (prompt, response), and the mean
reward of a policy's sampled responses on held-out prompts.

The reward model reads `prompt + response` as one text, exactly as TRL's RewardTrainer trains it
and as GRPOTrainer/RLOOTrainer score completions (non-conversational data), so one number means
the same in every stage. Sampling goes through the shared inference engine, seeded, so that the
"before" and "after" measurements differ only by the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import fmean

from llmtune.models.loading import LoadedModel, load_model
from llmtune.recipes.common import ModelRef
from llmtune.recipes.rlhf import RlhfRecipe

RewardFn = Callable[[list[str], list[str]], list[float]]
"""(prompts, responses) -> one reward per response."""


class RewardScorer:
    """A trained reward model (one output) scoring responses to prompts."""

    def __init__(self, loaded: LoadedModel, max_length: int = 512, batch_size: int = 32) -> None:
        from llmtune.inference.registry import over_loaded

        self.loaded = loaded
        self.engine = over_loaded("hf", loaded, batch_size=batch_size, max_length=max_length)
        if not self.engine.regression:
            raise ValueError(f"{loaded.source} is not a reward model: its head has more than one output")

    @classmethod
    def load(cls, ref: ModelRef, recipe: RlhfRecipe, key: str = "reward_model") -> RewardScorer:
        from llmtune.errors import BadInput

        loaded = load_model(ref, recipe, head="classification", labels=head_labels(ref, recipe, key), key=key)
        try:
            return cls(loaded, max_length=recipe.data.max_length)
        except ValueError as exc:
            raise BadInput(
                f"{exc}; train one with stage: reward",
                file=str(recipe.source) if recipe.source else None,
                key=key,
            ) from None

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """The reward of each response to its prompt, in order."""
        return self.engine.score([p + r for p, r in zip(prompts, responses)])

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        return self.score(prompts, responses)


def head_labels(ref: ModelRef, recipe: RlhfRecipe, key: str) -> list[str] | None:
    """The one output's name when `ref` is a reward model (one-output head), else None.

    Passed to load_model so that the base of an adapter folder (e.g. a hub encoder, which would
    get a fresh head of two outputs) is built with the one output the adapter's saved head has."""
    from llmtune.models.loading import inspect_model

    if ref.scratch is not None:  # an untrained reward model: tests and smoke runs
        return ["score"]
    info = inspect_model(ref, recipe, key)
    return (info.head_labels or ["score"]) if info.regression else None


@dataclass
class Sampled:
    """A model's sampled responses to held-out prompts and their rewards."""

    prompts: list[str]
    responses: list[list[str]]  # per prompt, `samples` responses
    rewards: list[list[float]]

    @property
    def mean(self) -> float:
        return fmean(r for per_prompt in self.rewards for r in per_prompt)


def sample_and_score(
    loaded: LoadedModel,
    prompts: list[str],
    reward: RewardFn,
    recipe: RlhfRecipe,
    *,
    samples: int | None = None,
    seed: int | None = None,
) -> Sampled:
    """Sample `samples` responses per prompt (default: generation.num_generations) at the
    recipe's sampling settings, seeded, and score every one with `reward`."""
    from llmtune.inference.registry import over_loaded

    gen = recipe.generation
    count = samples or gen.num_generations
    engine = over_loaded("hf", loaded, max_length=recipe.data.max_length)
    was_training = loaded.model.training
    try:
        outputs = engine.generate(
            prompts,
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            top_k=gen.top_k or None,
            num_return_sequences=count,
            seed=recipe.seed if seed is None else seed,
        )
    finally:
        loaded.model.train(was_training)
    responses = [g.texts for g in outputs]
    flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
    flat = reward(flat_prompts, [r for rs in responses for r in rs])
    rewards, start = [], 0
    for rs in responses:
        rewards.append(flat[start : start + len(rs)])
        start += len(rs)
    return Sampled(prompts, responses, rewards)
