"""`llmtune init rlhf`: one starter per stage, each a valid recipe that shows the keys its stage
reads and no key it ignores; the plain starter shows every key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import assert_bad_input, run_cli, write

from llmtune.recipes import RECIPE_KINDS, load_recipe
from llmtune.recipes.starter import RLHF_STAGES, starter_recipe

RlhfRecipe = RECIPE_KINDS["rlhf"]
ONLY_FOR = {  # keys that only some stages read
    "generation": {"collect", "policy", "dpo", "kto"},
    "reward_model": {"policy", "dpo", "kto"},
    "rewards": {"policy"},
    "reward_weight": {"policy"},
    "algorithm": {"policy"},
    "beta": {"policy", "dpo", "kto"},
    "margin": {"reward"},
    "method": {"reward", "policy", "dpo", "kto"},
    "training": {"reward", "policy", "dpo", "kto"},
}


@pytest.mark.parametrize("stage", ["collect", "reward", "policy", "dpo", "kto"])
def test_each_stage_has_a_starter_that_validates_and_shows_only_its_keys(stage: str, tmp_path: Path) -> None:
    text = starter_recipe("rlhf", RlhfRecipe, stage)
    recipe = load_recipe(write(tmp_path / f"{stage}.yaml", text))
    assert recipe.stage == stage
    keys = set(yaml.safe_load(text))
    for key, stages in ONLY_FOR.items():
        assert (key in keys) == (stage in stages), (stage, key)
    for key in ("model", "data", "stage", "output"):
        assert key in keys


def test_the_stages_covered_are_the_schema_s_stages() -> None:
    from typing import get_args

    from llmtune.recipes.rlhf import Stage

    assert set(RLHF_STAGES) == set(get_args(Stage))


def test_policy_starter_shows_both_rule_rewards_as_a_readable_block(tmp_path: Path) -> None:
    text = starter_recipe("rlhf", RlhfRecipe, "policy")
    assert "rewards:\n- type: length\n" in text
    recipe = load_recipe(write(tmp_path / "p.yaml", text))
    assert [r.type for r in recipe.rewards] == ["length", "regex"]
    assert recipe.rewards[1].must_match is False


def test_init_rlhf_stage_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    assert run_cli("init", "rlhf", path, "--stage", "policy").code == 0
    assert load_recipe(path).stage == "policy"
    assert run_cli("validate", path).code == 0
    assert_bad_input(run_cli("init", "rlhf", "--stage", "ppo"), "ppo", "collect")
    assert_bad_input(run_cli("init", "finetune", "--stage", "policy"), "--stage")
