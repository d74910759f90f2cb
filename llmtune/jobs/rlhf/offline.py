"""`llmtune rlhf` stages `dpo` and `kto`: offline preference optimisation with TRL.

- dpo: rows are pairs (prompt, chosen, rejected) or rankings expanded to every strictly ordered
  pair (`llmtune.data.preferences`); tied responses are never a preference: counted and left out.
  TRL's DPOTrainer trains on them.
- kto: unpaired rows (prompt, completion, label good/bad), or rankings whose best tier is good and
  worst tier bad. TRL's KTOTrainer trains on them; its KL estimate needs batches of 2 or more, and
  unbalanced data gets TRL's recommended desirable/undesirable weights (KTO paper, eq. 8).

The policy loads and adapts as finetune's SFT does (`method:`); the reference is the policy before
training: with a peft adapter, TRL's own (the base with the adapter disabled, or a frozen copy of
an earlier run's adapter), otherwise a frozen copy made here. The training arguments are the ones
every job gets (`training_arguments`): checkpoints, --resume and graceful stop as for the others.
Before and after training the held-out split is measured (`offline_report.py`), and with a
`reward_model` the mean reward of the policy's sampled answers (`scoring.py`, same seed).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import llmtune.jobs.rlhf.offline_report as measured
from llmtune.console import say
from llmtune.data.preferences import Preferences, graded_of, preferences_of
from llmtune.data.readers import Rows
from llmtune.data.templates import template_of
from llmtune.errors import BadInput
from llmtune.jobs.rlhf.common import (
    agreement_lines,
    frozen_copy,
    people_agreement,
    prompt_text,
    read_splits,
    stage_plan,
)
from llmtune.jobs.rlhf.kto_rows import kto_weights, shuffled
from llmtune.models.loading import LoadedModel, inspect_model, load_model
from llmtune.models.methods import apply_method
from llmtune.outputs import atomic_write_json
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

SAMPLES_BEFORE = "checkpoints/samples_before.json"  # kept for --resume: the before samples


class OfflineJob(TrainingJob):
    """The dpo / kto steps the shared training run calls, in order."""

    def __init__(self, recipe: RlhfRecipe) -> None:
        self.recipe = recipe
        self.template = template_of(recipe.data.template)
        self.details: dict[str, Any] = {}
        self.all_tied: dict[str, int] = {}
        self.samples: dict[str, list[dict[str, Any]]] = {}
        self.run_dir: RunDir | None = None

    # ------------------------------------------------------------------ preflight
    def preflight(self) -> list[Path]:
        recipe, file = self.recipe, source_of(self.recipe)
        if recipe.stage == "kto" and recipe.training.batch_size < 2:
            raise BadInput(
                f"kto needs training.batch_size 2 or more (it is {recipe.training.batch_size}): KTO "
                "estimates its KL term from the other completions of the same batch",
                file=file,
                key="training.batch_size",
            )
        self.splits = read_splits(recipe)
        if not self.splits.test.rows:
            raise BadInput(
                f"stage {recipe.stage} measures the policy on held-out preferences before and after "
                "training: give data.test (a file) or data.split.test (a share of train)",
                file=file,
                key="data.test",
            )
        if recipe.stage == "dpo":
            self._dpo_data()
        else:
            self._kto_data()
        self.device = preflight(recipe.model, recipe.method.type, recipe.training)
        return self.splits.files

    def _pairs(self, rows: Rows, key: str) -> Preferences:
        data = self.recipe.data
        return preferences_of(rows, skip_bad_rows=data.skip_bad_rows, key=key, aggregate=data.aggregate)

    def _prompt(self, row: dict[str, Any], where: str) -> str:
        return prompt_text(row, self.template, where)

    def _dpo_data(self) -> None:
        train = self._pairs(self.splits.train, "data.train")
        self.train = self._pair_columns(train)
        validation = (
            self._pairs(self.splits.validation, "data.validation") if self.splits.validation.rows else None
        )
        self.validation = self._pair_columns(validation) if validation else None
        test = self._pairs(self.splits.test, "data.test")
        self.held = measured.HeldOut()
        for p, c, r in zip(*self._pair_columns(test).values()):
            self.held.add(p, c, r)
        counts = train.counts()
        self.details = {
            "pairs": counts["pairs"],
            "tied_pairs": counts["tied_pairs"],
            "rankings": counts["rankings"],
            "pair_rows": counts["pair_rows"],
            "unranked_rows": counts["unranked"],
            "all_tied_rankings": counts["all_tied"],
            "aggregate": self.recipe.data.aggregate,
            "agreement": people_agreement(self.splits),
            "validation_pairs": len(validation.pairs) if validation else 0,
            "test_pairs": len(test.pairs),
            "test_tied_pairs": len(test.ties),
        }
        if counts["tied_pairs"]:
            say(
                f"{counts['tied_pairs']} tied pair(s) in data.train (ranked equal): never a preference, not used"
            )
        if counts["unranked"]:
            say(f"{counts['unranked']} row(s) not ranked yet (empty ranking): skipped")

    def _pair_columns(self, prefs: Preferences) -> dict[str, list[str]]:
        prompts = {}  # the pairs of one ranking share their row's prompt
        for pair in prefs.pairs:
            if pair.group not in prompts:
                prompts[pair.group] = self._prompt(prefs.rows[pair.group], pair.where)
        return {
            "prompt": [prompts[p.group] for p in prefs.pairs],
            "chosen": [p.chosen for p in prefs.pairs],
            "rejected": [p.rejected for p in prefs.pairs],
        }

    def _kto_data(self) -> None:
        skip = self.recipe.data.skip_bad_rows
        train = self._graded(self.splits.train, "data.train", skip)
        self.train = shuffled(train, self.recipe.seed)
        validation = self.splits.validation
        self.validation = (
            shuffled(self._graded(validation, "data.validation", skip), self.recipe.seed)
            if validation.rows
            else None
        )
        test = self._graded(self.splits.test, "data.test", skip)
        self.held = measured.HeldOut(graded=list(zip(test["prompt"], test["completion"], test["label"])))
        by_prompt: dict[str, dict[bool, list[str]]] = defaultdict(lambda: {True: [], False: []})
        for prompt, completion, good in self.held.graded:
            by_prompt[prompt][good].append(completion)
        for prompt, kinds in by_prompt.items():  # every good and bad answer of one prompt: a pair
            for good in kinds[True]:
                for bad in kinds[False]:
                    self.held.add(prompt, good, bad)
        good = sum(train["label"])
        bad = len(train["label"]) - good
        self.weights = kto_weights(good, bad)
        self.details = {
            "good": good,
            "bad": bad,
            "desirable_weight": self.weights[0],
            "undesirable_weight": self.weights[1],
            "all_tied_rankings": self.all_tied.get("data.train", 0),
            "aggregate": self.recipe.data.aggregate,
            "agreement": people_agreement(self.splits),
            "test_rows": len(test["label"]),
            "test_pairs": len(self.held.prompts),
        }
        if self.weights != (1.0, 1.0):
            say(
                f"kto: {good} good and {bad} bad training rows; desirable_weight {self.weights[0]}, "
                f"undesirable_weight {self.weights[1]} (TRL's recommended range for unbalanced data)"
            )

    def _graded(self, rows: Rows, key: str, skip: bool) -> dict[str, list[Any]]:
        found = graded_of(rows, skip_bad_rows=skip, key=key, aggregate=self.recipe.data.aggregate)
        if found.all_tied:
            say(f"{found.all_tied} ranking(s) in {key} tie every response: no good or bad row from them")
        self.all_tied[key] = found.all_tied
        graded = found.rows
        row_at = dict(zip(rows.where, rows.rows))
        return {
            "prompt": [self._prompt(row_at[g.where], g.where) for g in graded],
            "completion": [g.completion for g in graded],
            "label": [g.good for g in graded],
        }

    # ---------------------------------------------------------------------- setup
    def setup(self, run_dir: Path, dry_run: bool = False) -> Plan:
        recipe = self.recipe
        # a scratch model's trained tokenizer learns from every prompt and answer
        corpus = (
            t for name in ("prompt", "chosen", "rejected", "completion") for t in self.train.get(name, [])
        )
        self.loaded = load_model(
            recipe.model,
            recipe,
            head="causal_lm",
            corpus=corpus,
            for_training=True,
            method=recipe.method.type,
            empty_weights=dry_run,
        )
        from llmtune.models.export import snapshot_base

        self.base = snapshot_base(self.loaded.model, recipe)
        self.model = apply_method(self.loaded.model, recipe.method, "causal_lm", self.loaded.tokenizer)
        self.scorer = None
        if recipe.reward_model is not None:
            if dry_run:
                inspect_model(recipe.reward_model, recipe, "reward_model")
            else:
                from llmtune.jobs.rlhf.scoring import RewardScorer

                self.scorer = RewardScorer.load(recipe.reward_model, recipe)
        rows = len(self.train["prompt"])
        self.training = resolve_training(recipe.training, recipe.method.type, "causal_lm", rows)
        details = {
            **self.details,
            "beta": recipe.beta,
            "reference": self.reference_kind(),
            "reward_model": recipe.reward_model.describe() if recipe.reward_model else None,
            "epochs": self.training.epochs,
            "learning_rate": self.training.learning_rate,
        }
        return stage_plan(run_dir, recipe, self.splits, self.loaded, self.model, self.training, rows, details)

    def reference_kind(self) -> str:
        """What the policy is compared with (TRL's KL anchor), in words."""
        if hasattr(self.model, "peft_config"):  # a new LoRA starts as the base model itself
            return "the starting policy, frozen (TRL's copy of the adapter as training starts)"
        return "the starting policy, frozen (a copy of the model as training starts)"

    # -------------------------------------------------------------------- trainer
    def trainer(self, run_dir: RunDir) -> Any:
        import datasets
        from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

        from llmtune.runs.callbacks import keep_stdout_clean

        recipe, kto = self.recipe, self.recipe.stage == "kto"
        self.run_dir = run_dir
        has_validation = self.validation is not None
        extra: dict[str, Any] = {
            "beta": recipe.beta,
            "max_length": recipe.data.max_length,
            "dataset_num_proc": None,
        }
        if kto:
            extra.update(desirable_weight=self.weights[0], undesirable_weight=self.weights[1])
        args = training_arguments(
            self.training,
            run_dir.path,
            device=self.loaded.device,
            seed=recipe.seed,
            has_validation=has_validation,
            extra=extra,
            args_class=KTOConfig if kto else DPOConfig,
        )
        # TRL makes a peft model's reference itself; otherwise it would reload the model from its
        # path, which a scratch model or a merged earlier adapter does not have
        reference = None if hasattr(self.model, "peft_config") else frozen_copy(self.model)
        trainer = (KTOTrainer if kto else DPOTrainer)(
            model=self.model,
            ref_model=reference,
            args=args,
            train_dataset=datasets.Dataset.from_dict(self.train),
            eval_dataset=datasets.Dataset.from_dict(self.validation) if has_validation else None,
            processing_class=self.loaded.tokenizer,
            callbacks=callbacks(self.training, run_dir, has_validation),
        )
        keep_stdout_clean(trainer)
        return trainer

    # ------------------------------------------------------------------- evaluate
    def evaluate(self, trainer: Any) -> Metrics | None:
        recipe, tokenizer = self.recipe, self.loaded.tokenizer
        model = trainer.model
        length = recipe.data.max_length

        def policy(prompts: list[str], completions: list[str]) -> list[float]:
            return measured.completion_logps(model, tokenizer, prompts, completions, length)

        metrics = measured.held_out_metrics(self.held, policy, lambda: self._reference(trainer), recipe.beta)
        if self.scorer is not None:
            metrics["mean_reward"] = self._mean_reward(trainer)
        return metrics

    def _reference(self, trainer: Any) -> AbstractContextManager[measured.Scorer]:
        length = self.recipe.data.max_length
        if trainer.ref_model is not None:
            return measured.scorer_of(trainer.ref_model, self.loaded.tokenizer, length)
        from trl.trainer.utils import use_adapter

        @contextmanager
        def adapter_off() -> Any:
            model = trainer.model
            with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
                with measured.scorer_of(model, self.loaded.tokenizer, length) as scorer:
                    yield scorer

        return adapter_off()

    def _mean_reward(self, trainer: Any) -> float:
        from llmtune.jobs.rlhf.scoring import sample_and_score

        recipe = self.recipe
        phase = "before" if trainer.state.global_step == 0 else "after"
        policy = LoadedModel(trainer.model, self.loaded.tokenizer, "", self.loaded.device)
        sampled = sample_and_score(
            policy, self.held.distinct_prompts(), self.scorer, recipe, seed=recipe.seed
        )
        self.samples[phase] = measured.sample_rows(phase, sampled)
        if phase == "before" and self.run_dir is not None:  # a resumed run reports them too
            atomic_write_json(self.run_dir.path / SAMPLES_BEFORE, self.samples[phase])
        return sampled.mean

    # ----------------------------------------------------------------------- save
    def save(self, trainer: Any, run_dir: RunDir) -> None:
        import json

        from llmtune.models.export import save_trained_model

        model = trainer.model
        if "ref" in getattr(model, "peft_config", {}):
            model.delete_adapter("ref")  # TRL's frozen reference copy: not part of the result
        save_trained_model(model, self.loaded, run_dir.path / "model", self.recipe, base=self.base)
        if self.scorer is not None:
            stored = run_dir.path / SAMPLES_BEFORE
            if "before" not in self.samples and stored.exists():
                self.samples["before"] = json.loads(stored.read_text(encoding="utf-8"))
            measured.write_samples(run_dir, self.samples.get("before", []) + self.samples.get("after", []))

    # --------------------------------------------------------------------- report
    def eval_headline(self, outcome: Outcome) -> Metrics:
        agreement = self.details.get("agreement") or {}
        return {**measured.top_level(outcome), "annotator_agreement": agreement.get("pairwise_agreement")}

    def report(self, run_dir: RunDir, outcome: Outcome) -> None:
        recipe = self.recipe
        about = [
            f"Stage **{recipe.stage}** on `{recipe.model.describe()}` with method `{recipe.method.type}`, "
            f"beta {recipe.beta}; reference: {self.reference_kind()}. {outcome.steps} optimizer steps.",
        ]
        accuracy = (outcome.test or {}).get("preference_accuracy")
        data = measured.data_lines(recipe.stage, self.details) + [""]
        data += agreement_lines(self.details.get("agreement"), accuracy, "preference accuracy")
        samples = self.samples.get("before", []) + self.samples.get("after", [])
        measured.write_report(
            run_dir, outcome, title=f"rlhf {recipe.stage}", about=about, data_lines=data, samples=samples
        )

    def headline(self, metrics: Metrics | None) -> Metrics | None:
        if metrics is None:
            return None
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}

    def warnings(self, outcome: Outcome) -> list[str]:
        pairs = (outcome.test or {}).get("pairs", 0)
        if 0 < pairs < 20:
            return [f"only {pairs} held-out pairs: each moves the accuracies by {1 / pairs:.2f}"]
        return []
