"""`llmtune rlhf` with `stage: policy`: the policy learns to write what the rewards prefer.

Wraps TRL's GRPOTrainer (`algorithm: grpo`) or RLOOTrainer (`rloo`): at every step the policy
samples `generation.num_generations` completions of each training prompt, every completion is
scored, and each is pushed up or down by how it compares with its group, with a KL penalty
(`beta`) that keeps the policy near the reference (the policy before training).

The reward is a weighted sum (`rules.py`): the reward model's score (`reward_model`, weight
`reward_weight`; it reads prompt + completion with its own tokenizer, so it may tokenize
differently from the policy) and the recipe's rule rewards. Each is its own TRL reward function,
so TRL's log shows each one's mean.

Before and after training, the policy samples `num_generations` responses to every held-out
prompt (the test split) with the same seed, so that the two measurements differ only by the
model; eval.json has `mean_reward_before` and `mean_reward_after` (the weighted total), the
report each component's mean and sample responses, and samples.jsonl every scored response.

`training.batch_size` counts completions: each step samples batch_size x grad_accum completions,
num_generations per prompt, so that product must be a multiple of num_generations (exit 2); an
epoch is every training prompt's group once. Validation rows are not used (the held-out measure is
the test split's mean reward). TRL gives the policy whole prompts; `data.max_length` bounds the
prompts of the before/after sampling and the reward model's input.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from statistics import fmean
from typing import Any

import llmtune.jobs.rlhf.common as common
import llmtune.jobs.rlhf.policy_report as policy_report
from llmtune.data.templates import template_of
from llmtune.errors import BadInput
from llmtune.jobs.rlhf.diversity import diversity_report
from llmtune.jobs.rlhf.rules import Component, RewardMix, components_of
from llmtune.models.loading import inspect_model, load_model
from llmtune.outputs import atomic_write_text
from llmtune.recipes.common import Training
from llmtune.recipes.rlhf import RlhfRecipe
from llmtune.runs.job import Metrics, Outcome, Plan, TrainingJob
from llmtune.runs.lifecycle import source_of
from llmtune.runs.rundir import RunDir
from llmtune.runs.training import (
    callbacks,
    preflight,
    resolve_training,
    training_arguments,
)

BEFORE_SAMPLES = "samples_before.json"
"""Where (under checkpoints/) the responses sampled before training wait for samples.jsonl, so
that a resumed run writes the same file as an uninterrupted one."""


class PolicyJob(TrainingJob):
    """The steps the shared training run calls, in order."""

    loss_is_objective = False  # GRPO/RLOO's loss is near zero by construction: the reward tells

    def __init__(self, recipe: RlhfRecipe) -> None:
        self.recipe = recipe
        self.samples: dict[str, list[dict[str, Any]]] = {}
        self.diversity: dict[str, Any] = {}

    # ------------------------------------------------------------------ preflight
    def preflight(self) -> list[Path]:
        recipe = self.recipe
        self.splits = common.read_splits(recipe)
        template = template_of(recipe.data.template)
        self.prompts = {
            name: common.prompts_of(getattr(self.splits, name), template) for name in ("train", "test")
        }
        if not self.prompts["train"]:
            raise BadInput("stage policy needs training prompts; data.train has none", key="data.train")
        if not self.prompts["test"]:
            raise BadInput(
                "stage policy measures the mean reward before and after training on held-out prompts: "
                "give data.test (a file of prompts) or carve one with data.split.test",
                file=source_of(recipe),
                key="data.test",
            )
        check_group_fits(recipe)
        if recipe.reward_model is not None:
            check_reward_model(recipe)
        self.device = preflight(recipe.model, recipe.method.type, recipe.training)
        return self.splits.files

    # ---------------------------------------------------------------------- setup
    def setup(self, run_dir: Path, dry_run: bool = False) -> Plan:
        from llmtune.models.export import snapshot_base
        from llmtune.models.methods import apply_method

        recipe, generation = self.recipe, self.recipe.generation
        self.loaded = load_model(
            recipe.model,
            recipe,
            head="causal_lm",
            corpus=iter(self.prompts["train"]),
            for_training=True,
            method=recipe.method.type,
            empty_weights=dry_run,  # a dry run only counts parameters
        )
        tokenizer = self.loaded.tokenizer
        if tokenizer.pad_token is None:  # TRL pads the group's prompts and completions
            tokenizer.pad_token = tokenizer.eos_token
        self.base = snapshot_base(self.loaded.model, recipe)
        self.model = apply_method(self.loaded.model, recipe.method, "causal_lm", tokenizer)
        self.reference = None if dry_run else reference_copy(self.model, recipe.beta)
        self.mix = RewardMix(self.components(load=not dry_run))
        completions = len(self.prompts["train"]) * generation.num_generations
        self.training = resolve_training(recipe.training, recipe.method.type, "causal_lm", completions)
        details = {
            "algorithm": recipe.algorithm,
            "beta": recipe.beta,
            "num_generations": generation.num_generations,
            "prompts_per_step": prompts_per_step(recipe.training, generation.num_generations),
            "max_new_tokens": generation.max_new_tokens,
            "rewards": self.mix.weights,
            "reward_model": recipe.reward_model.describe() if recipe.reward_model else None,
            "learning_rate": self.training.learning_rate,
        }
        return common.stage_plan(
            run_dir, recipe, self.splits, self.loaded, self.model, self.training, completions, details
        )

    def components(self, load: bool) -> list[Component]:
        """The reward model (loaded unless a dry run) and the rule rewards, named and weighted."""
        from llmtune.jobs.rlhf.scoring import RewardScorer

        recipe = self.recipe
        out = []
        if recipe.reward_model is not None:

            def unloaded(prompts: list[str], responses: list[str]) -> list[float]:
                raise AssertionError("a dry run scores nothing")

            score = RewardScorer.load(recipe.reward_model, recipe).score if load else unloaded
            out.append(Component("reward_model", recipe.reward_weight, score))
        return out + components_of(recipe.rewards)

    # -------------------------------------------------------------------- trainer
    def trainer(self, run_dir: RunDir) -> Any:
        import datasets

        from llmtune.runs.callbacks import keep_stdout_clean

        recipe, generation = self.recipe, self.recipe.generation
        self.run_dir = run_dir
        trainer_class, config_class, module = trl_classes(recipe.algorithm)
        args = training_arguments(
            self.training,
            run_dir.path,
            device=self.loaded.device,
            seed=recipe.seed,
            has_validation=False,  # held-out prompts are measured by `evaluate`, before and after
            extra={
                "beta": recipe.beta,
                "num_generations": generation.num_generations,
                "max_completion_length": generation.max_new_tokens,
                "temperature": generation.temperature,
                "top_p": generation.top_p,
                "top_k": generation.top_k,
                "reward_weights": [c.weight for c in self.mix.components],
                "use_vllm": False,
            },
            args_class=config_class,
        )
        with reference_from(module, self.reference):
            trainer = trainer_class(
                model=self.model,
                reward_funcs=[c.for_trl() for c in self.mix.components],
                args=args,
                train_dataset=datasets.Dataset.from_dict({"prompt": self.prompts["train"]}),
                processing_class=self.loaded.tokenizer,
                callbacks=callbacks(self.training, run_dir, False),
            )
        keep_stdout_clean(trainer)
        return trainer

    # ------------------------------------------------------------------- evaluate
    def evaluate(self, trainer: Any) -> Metrics | None:
        """Mean total reward, each component's mean and the mean response length, over
        num_generations sampled responses per held-out prompt (same seed before and after)."""
        from llmtune.jobs.rlhf.scoring import sample_and_score

        when = "before" if trainer.state.global_step == 0 else "after"
        recipe = self.recipe
        policy = replace(self.loaded, model=trainer.model)
        sampled = sample_and_score(policy, self.prompts["test"], self.mix, recipe, seed=recipe.seed)
        rows = policy_report.sample_rows(when, sampled, self.mix.last)
        self.samples[when] = rows
        if when == "before":  # kept for a resumed run, which does not measure "before" again
            path = self.run_dir.path / "checkpoints" / BEFORE_SAMPLES
            atomic_write_text(path, json.dumps(rows))
        return sample_metrics(rows, [c.name for c in self.mix.components], len(self.prompts["test"]))

    # ----------------------------------------------------------------------- save
    def save(self, trainer: Any, run_dir: RunDir) -> None:
        from llmtune.models.export import save_trained_model

        model = trainer.model
        if "ref" in getattr(model, "peft_config", {}):
            # TRL's frozen copy of the starting adapter (the KL reference): not part of the result
            model.delete_adapter("ref")
        save_trained_model(model, self.loaded, run_dir.path / "model", self.recipe, base=self.base)
        if "before" not in self.samples:
            stored = run_dir.path / "checkpoints" / BEFORE_SAMPLES
            self.samples["before"] = json.loads(stored.read_text(encoding="utf-8"))
        rows = self.samples["before"] + self.samples["after"]
        run_dir.write_text("samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    # --------------------------------------------------------------------- report
    def eval_headline(self, outcome: Outcome) -> Metrics:
        before, after = outcome.test_before or {}, outcome.test or {}
        answers = {when: [r["response"] for r in self.samples.get(when, [])] for when in ("before", "after")}
        self.diversity = diversity_report(answers["before"], answers["after"], self.run_dir.path)
        return {
            "mean_reward_before": before.get("mean_reward"),
            "mean_reward_after": after.get("mean_reward"),
            "diversity": self.diversity,
        }

    def report(self, run_dir: RunDir, outcome: Outcome) -> None:
        policy_report.report(self.recipe, run_dir, outcome, self.samples, self.mix.weights, self.diversity)

    def headline(self, metrics: Metrics | None) -> Metrics | None:
        if metrics is None:
            return None
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    def warnings(self, outcome: Outcome) -> list[str]:
        before, after = (outcome.test_before or {}), (outcome.test or {})
        collapsed = [self.diversity["warning"]] if self.diversity.get("warning") else []
        if (
            "mean_reward" in before
            and "mean_reward" in after
            and after["mean_reward"] <= before["mean_reward"]
        ):
            return collapsed + [
                f"the mean reward on held-out prompts did not rise ({before['mean_reward']:.4g} before, "
                f"{after['mean_reward']:.4g} after): train longer, or try another training.learning_rate "
                "or beta"
            ]
        return collapsed


def sample_metrics(rows: list[dict[str, Any]], names: list[str], prompts: int) -> Metrics:
    """mean_reward (the weighted total that is optimised), each component's mean, and the mean
    response length in characters."""
    out: Metrics = {"mean_reward": fmean(r["reward"] for r in rows)}
    for name in names:
        out[name] = fmean(r["rewards"][name] for r in rows)
    out["response_chars"] = fmean(len(r["response"]) for r in rows)
    out["prompts"], out["samples"] = prompts, len(rows)
    return out


def prompts_per_step(training: Training, num_generations: int) -> float:
    """Prompts whose groups one optimizer step learns from (per device)."""
    return training.batch_size * training.grad_accum / num_generations


def check_group_fits(recipe: RlhfRecipe) -> None:
    """TRL samples batch_size x grad_accum x processes completions per generation round, whole
    groups of num_generations each: refuse a product that splits a group (TRL's ValueError would
    come only after the models load)."""
    training, group = recipe.training, recipe.generation.num_generations
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    total = training.batch_size * training.grad_accum * processes
    if total % group:
        fit = math.ceil(training.batch_size / group) * group
        raise BadInput(
            f"training.batch_size x training.grad_accum x processes ({training.batch_size} x "
            f"{training.grad_accum} x {processes} = {total} completions) must be a multiple of "
            f"generation.num_generations ({group}): each prompt's {group} completions are scored as one "
            f"group. Set training.batch_size: {fit}, or another num_generations",
            file=source_of(recipe),
            key="training.batch_size",
        )


def check_reward_model(recipe: RlhfRecipe) -> None:
    """The reward model must be a sequence classifier with one output (read from its files, before
    any model loads)."""
    assert recipe.reward_model is not None
    found = inspect_model(recipe.reward_model, recipe, "reward_model")
    if found.head == "classification" and found.regression:
        return
    if found.head == "classification":
        outputs = f"{len(found.head_labels)} outputs" if found.head_labels else "more than one output"
        what = f"a classifier with {outputs}"
    else:
        what = f"a {found.head or ' / '.join(found.architectures) or 'model without a head'}"
    raise BadInput(
        f"reward_model {recipe.reward_model.describe()} is {what}, not a reward model (a sequence "
        "classifier with one output); train one with stage: reward",
        file=source_of(recipe),
        key="reward_model",
    )


def reference_copy(model: Any, beta: float) -> Any | None:
    """The KL reference: a frozen copy of the policy before training. None where TRL needs none
    (beta 0: no KL; a peft policy: TRL disables the adapter to get the reference)."""
    from accelerate.utils import is_peft_model

    if beta == 0.0 or is_peft_model(model):
        return None
    return common.frozen_copy(model)


@contextmanager
def reference_from(module: Any, reference: Any | None) -> Iterator[None]:
    """While the trainer is built, hand it `reference` as its KL reference. TRL 1.16 builds the
    reference of a non-peft policy by reloading `config._name_or_path` from disk, which does not
    exist for a scratch model and is the wrong model for a policy built on an earlier run's
    merged adapter; the policy's own starting weights are the reference the KL penalty means."""
    if reference is None:
        yield
        return
    original = module.create_model_from_path
    module.create_model_from_path = lambda *args, **kwargs: reference
    try:
        yield
    finally:
        module.create_model_from_path = original


def trl_classes(algorithm: str) -> tuple[Any, Any, Any]:
    """(trainer class, config class, the trainer's module) for `algorithm`."""
    if algorithm == "grpo":
        import trl.trainer.grpo_trainer as module
        from trl import GRPOConfig, GRPOTrainer

        return GRPOTrainer, GRPOConfig, module
    import trl.trainer.rloo_trainer as module
    from trl import RLOOConfig, RLOOTrainer

    return RLOOTrainer, RLOOConfig, module
