"""The rewards stage policy optimises: the reward model's score and the recipe's rule rewards,
each a named, weighted component; the total is their weighted sum.

Rules are data (`rewards:` in the recipe), never code: a recipe cannot import anything, so the two
rule types are built here from their fields:
- length: `-max(0, len(response) - target) / target` (0 up to `target` characters, then minus the
  share by which the response is longer);
- regex: 1.0 when the response meets the rule (`must_match: true`: a search finds `pattern`;
  false: it finds none), else 0.0. Patterns run on RE2 (`llmtune.recipes.patterns`): linear time, so
  a pattern like `(?s)(.+)+QQQ9` cannot stall training; one RE2 cannot run is exit 2 at recipe time.

Each component is handed to TRL as its own reward function (a callable named after it, so that
TRL logs `rewards/<name>/mean` per component) with its weight in the config's `reward_weights`;
the same components score the held-out samples before and after training (`RewardMix.score`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmtune.recipes.patterns import compile_pattern
from llmtune.recipes.rlhf import RuleReward

Score = Callable[[list[str], list[str]], list[float]]
"""(prompts, responses) -> one reward per response."""


def length_penalty(target: int) -> Score:
    """0 for a response of at most `target` characters, else minus the share it is longer by."""

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        return [-max(0, len(r) - target) / target for r in responses]

    return score


def regex_reward(pattern: str, must_match: bool = True) -> Score:
    """1.0 when `pattern` is found in the response (must_match) or not found (not must_match)."""
    compiled = compile_pattern(pattern)  # RE2: linear in the response, never spins

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        return [1.0 if (compiled.search(r) is not None) == must_match else 0.0 for r in responses]

    return score


@dataclass(frozen=True)
class Component:
    """One named, weighted reward."""

    name: str
    weight: float
    score: Score

    def for_trl(self) -> Callable[..., list[float]]:
        """TRL's reward-function form, `(prompts, completions, **kwargs) -> list[float]`, named
        after the component (TRL logs each reward's mean under its function's __name__)."""

        def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
            return self.score(list(prompts), list(completions))

        reward.__name__ = reward.__qualname__ = self.name
        return reward


def rule_names(rules: list[RuleReward]) -> list[str]:
    """Readable, unique names: the type alone when the recipe has one rule of that type, else the
    type numbered in recipe order (regex_1, regex_2)."""
    types = [r.type for r in rules]
    seen: dict[str, int] = {}
    names = []
    for kind in types:
        seen[kind] = seen.get(kind, 0) + 1
        names.append(kind if types.count(kind) == 1 else f"{kind}_{seen[kind]}")
    return names


def rule_component(rule: RuleReward, name: str) -> Component:
    """The component a recipe's rule describes (the schema has checked its fields)."""
    if rule.type == "length":
        assert rule.target is not None
        return Component(name, rule.weight, length_penalty(rule.target))
    assert rule.pattern is not None
    return Component(name, rule.weight, regex_reward(rule.pattern, rule.must_match))


class RewardMix:
    """The weighted sum of the components, remembering each component's scores of the last
    responses it scored (for the per-component means and samples.jsonl)."""

    def __init__(self, components: list[Component]) -> None:
        self.components = components
        self.last: dict[str, list[float]] = {}

    @property
    def weights(self) -> dict[str, float]:
        return {c.name: c.weight for c in self.components}

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """The total reward of each response (components kept in `self.last`)."""
        self.last = {c.name: [float(v) for v in c.score(prompts, responses)] for c in self.components}
        return [sum(c.weight * self.last[c.name][i] for c in self.components) for i in range(len(responses))]

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        return self.score(prompts, responses)


def components_of(rules: list[RuleReward]) -> list[Component]:
    """The recipe's rule rewards as components, named by `rule_names`."""
    return [rule_component(rule, name) for rule, name in zip(rules, rule_names(rules))]
