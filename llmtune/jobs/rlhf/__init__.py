"""`llmtune rlhf`: learning from human preferences (SPEC section 3, rlhf), one stage per recipe.

    collect -> (people rank: `llmtune rank`) -> reward -> policy        (online: GRPO / RLOO)
                                                       \\-> dpo / kto   (offline)

`collect.py` samples K outputs per prompt into `candidates.jsonl` (resumable); `reward.py` trains
a one-output sequence classifier on pairs and on rankings expanded to pairs (`llmtune.data.
preferences`); `policy.py` optimises the policy with TRL's GRPOTrainer or RLOOTrainer against the
reward model and the recipe's rule rewards (`rules.py`); `offline.py` runs TRL's DPOTrainer and
KTOTrainer. `scoring.py` is what the stages share: the reward model's scores and the mean reward
of a model's sampled outputs on held-out prompts (before and after training).
"""

from __future__ import annotations

from typing import Any

from llmtune.recipes.rlhf import RlhfRecipe
from llmtune.runs.options import JobOptions


def run(recipe: RlhfRecipe, options: JobOptions) -> dict[str, Any]:
    """Run the recipe's stage; returns the summary (for --json)."""
    from llmtune.models.loading import quiet_libraries
    from llmtune.runs.lifecycle import run_training

    quiet_libraries(options.debug)
    if recipe.stage == "collect":
        from llmtune.jobs.rlhf.collect import run_collect

        return run_collect(recipe, options)
    if recipe.stage == "reward":
        from llmtune.jobs.rlhf.reward import RewardJob as Job
    elif recipe.stage == "policy":
        from llmtune.jobs.rlhf.policy import PolicyJob as Job
    else:
        from llmtune.jobs.rlhf.offline import OfflineJob as Job
    return run_training(Job(recipe), options)


__all__ = ["run"]
