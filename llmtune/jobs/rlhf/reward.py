"""`llmtune rlhf` with `stage: reward`: a reward model learns which responses people prefer.

Rows are pairs (prompt, chosen, rejected) or rankings (prompt, responses, ranking), expanded into
every strictly ordered pair (`llmtune.data.preferences`). Tied responses are never a preference:
they are counted, left out of training, and measured on the test split (a reward model that
learnt people's taste scores them close together). As steps of the shared training run:

- `preflight`: read the splits and expand them into pairs: a malformed ranking is exit 2 with
  file:line, a split with nothing ranked is exit 2 ("rank the rows first"), and held-out pairs
  are required (data.test or data.split.test): pairwise accuracy is what this stage reports.
- `setup`: the recipe's model as a sequence classifier with ONE output, the method applied (a
  LoRA reward model trains and saves its score head: peft's SEQ_CLS task puts `classifier` /
  `score` in modules_to_save), every pair tokenized.
- `trainer`: TRL's RewardTrainer, loss -log sigmoid(r_chosen - r_rejected - margin); with
  `margin: rank_distance` a pair's margin is how many tiers apart its responses were ranked.
- `evaluate`: pairwise accuracy on the held-out pairs (a tie in score counts as half a pair),
  the mean score gap of strict pairs and of tied pairs, mean rewards, through `RewardScorer`:
  the very code that scores for the policy stage.
- `save`, `report` (`reward_report.py`): model/, predictions.jsonl, eval.json, report.md.

What the model reads: prompt + response as ONE text, tokenized exactly as `scoring.RewardScorer`
tokenizes it (the tokenizer's own special tokens, cut to data.max_length). RewardTrainer would
concatenate prompt + response the same way for text rows, but it appends the EOS token (and
fails on tokenizers without one, such as BERT's); so the job hands it the token ids it built
itself (`chosen_ids` / `rejected_ids`, which RewardTrainer takes as they are), and training and
scoring see identical tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import llmtune.jobs.rlhf.common as common
from llmtune.console import say
from llmtune.data.preferences import Preferences, preferences_of
from llmtune.data.readers import Rows, Splits
from llmtune.data.templates import Template, template_of
from llmtune.errors import BadInput
from llmtune.models.loading import LoadedModel, load_model
from llmtune.models.methods import apply_method
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

HEAD_LABELS = ["reward"]  # the one output's name in config.json (id2label)
HEADLINE = ("pairwise_accuracy", "pair_gap", "tie_gap", "mean_reward_chosen", "mean_reward_rejected")
COUNTS = ("rankings", "pair_rows", "pairs", "tied_pairs", "unranked", "all_tied", "skipped")
FEW_TEST_PAIRS = 30  # below this, one pair moves the accuracy by more than 3 points


@dataclass(frozen=True)
class PairText:
    """One pair as the reward model reads it: the prompt text and two responses. For a strict
    pair `first` is the chosen response; for a tied pair neither is."""

    prompt: str
    first: str
    second: str
    distance: int
    where: str


@dataclass
class SplitPairs:
    """One split's strict pairs and tied pairs, as text, and the counts behind them."""

    pairs: list[PairText] = field(default_factory=list)
    ties: list[PairText] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Scored:
    """The reward model's scores of one split's pairs: first/second of each strict and tied pair."""

    pairs: list[PairText]
    chosen: list[float]
    rejected: list[float]
    ties: list[PairText]
    tie_scores: list[tuple[float, float]]


class RewardJob(TrainingJob):
    """The reward stage's steps, in the order the shared training run calls them."""

    def __init__(self, recipe: RlhfRecipe) -> None:
        self.recipe = recipe
        self.template = template_of(recipe.data.template)
        self.warned: list[str] = []

    # ------------------------------------------------------------------ preflight
    def preflight(self) -> list[Path]:
        self.splits = common.read_splits(self.recipe)
        self.data = read_pairs(self.recipe, self.splits, self.template)
        self.device = preflight(self.recipe.model, self.recipe.method.type, self.recipe.training)
        return self.splits.files

    # ---------------------------------------------------------------------- setup
    def setup(self, run_dir: Path, dry_run: bool = False) -> Plan:
        from llmtune.models.export import snapshot_base

        recipe, train = self.recipe, self.data["train"]
        self.loaded = load_model(
            recipe.model,
            recipe,
            head="classification",
            labels=HEAD_LABELS,
            corpus=(p.prompt + text for p in train.pairs for text in (p.first, p.second)),
            for_training=True,
            method=recipe.method.type,
            empty_weights=dry_run,  # a dry run only counts parameters: no weights read
        )
        self.base = snapshot_base(self.loaded.model, recipe)
        self.model = apply_method(self.loaded.model, recipe.method, "classification", self.loaded.tokenizer)
        self.datasets = {name: self.dataset(name) for name in ("train", "validation")}
        self.training = resolve_training(recipe.training, recipe.method.type, "reward", len(train.pairs))
        counts = {name: split.counts for name, split in self.data.items()}
        details: dict[str, Any] = {k: {name: c[k] for name, c in counts.items()} for k in COUNTS}
        details.update(
            margin=self.recipe.margin,
            epochs=self.training.epochs,
            learning_rate=self.training.learning_rate,
            aggregate=recipe.data.aggregate,
            agreement=common.people_agreement(self.splits),
        )
        skipped = sum(c["skipped"] for c in counts.values())
        return common.stage_plan(
            run_dir,
            recipe,
            self.splits,
            self.loaded,
            self.model,
            self.training,
            len(train.pairs),
            details,
            skipped,
        )

    def dataset(self, name: str) -> Any:
        """RewardTrainer's rows for a split (None without pairs): token ids of prompt + chosen and
        prompt + rejected, and the margin column with `margin: rank_distance`."""
        split = self.data.get(name)
        if split is None or not split.pairs:
            return None
        columns = preference_columns(split.pairs, self.recipe.margin)
        data = tokenized(columns, self.loaded.tokenizer, self.recipe.data.max_length)
        same = sum(a == b for a, b in zip(data["chosen_ids"], data["rejected_ids"]))
        if same:
            self.warned.append(
                f"{same} {name} pair(s) read the same once cut to data.max_length "
                f"({self.recipe.data.max_length} tokens): nothing to learn from them; raise data.max_length"
            )
            say(f"warning: {self.warned[-1]}")
        return data

    # -------------------------------------------------------------------- trainer
    def trainer(self, run_dir: RunDir) -> Any:
        from trl import RewardConfig, RewardTrainer

        from llmtune.runs.callbacks import keep_stdout_clean

        has_validation = self.datasets["validation"] is not None
        rows = len(self.datasets["validation"]) if has_validation else None
        args = training_arguments(
            self.training,
            run_dir.path,
            device=self.loaded.device,
            seed=self.recipe.seed,
            has_validation=has_validation,
            validation_rows=rows,
            # the ids are already cut to data.max_length: RewardTrainer would drop, not cut, longer pairs
            extra={"max_length": None, "dataset_num_proc": None},
            args_class=RewardConfig,
        )
        trainer = RewardTrainer(
            model=self.model,
            args=args,
            train_dataset=self.datasets["train"],
            eval_dataset=self.datasets["validation"],
            processing_class=self.loaded.tokenizer,
            callbacks=callbacks(self.training, run_dir, has_validation, rows),
        )
        keep_stdout_clean(trainer)
        return trainer

    # ------------------------------------------------------------------- evaluate
    def evaluate(self, trainer: Any) -> Metrics | None:
        from llmtune.jobs.rlhf.scoring import RewardScorer

        loaded = LoadedModel(trainer.model, self.loaded.tokenizer, self.loaded.source, self.loaded.device)
        was_training = trainer.model.training
        try:
            scorer = RewardScorer(loaded, max_length=self.recipe.data.max_length)
            self.scored = score_pairs(scorer, self.data["test"])
        finally:
            trainer.model.train(was_training)
        return pairwise_metrics(self.scored)

    # ----------------------------------------------------------------------- save
    def save(self, trainer: Any, run_dir: RunDir) -> None:
        from llmtune.jobs.rlhf.reward_report import write_predictions
        from llmtune.models.export import save_trained_model

        save_trained_model(
            trainer.model,
            self.loaded,
            run_dir.path / "model",
            self.recipe,
            labels=HEAD_LABELS,
            base=self.base,
        )
        write_predictions(run_dir, self.scored)

    # --------------------------------------------------------------------- report
    def eval_headline(self, outcome: Outcome) -> Metrics:
        """SPEC's keys: the held-out pairwise accuracy after and before training."""
        after, before = outcome.test or {}, outcome.test_before or {}
        agreement = outcome.plan.details.get("agreement") or {}
        return {
            "pairwise_accuracy": after.get("pairwise_accuracy"),
            "pairwise_accuracy_before": before.get("pairwise_accuracy"),
            "annotator_agreement": agreement.get("pairwise_agreement"),
        }

    def report(self, run_dir: RunDir, outcome: Outcome) -> None:
        from llmtune.jobs.rlhf.reward_report import write_report

        write_report(self.recipe, run_dir, outcome, self.scored)

    def headline(self, metrics: Metrics | None) -> dict[str, Any] | None:
        if metrics is None:
            return None
        shown = {k: None if metrics.get(k) is None else round(metrics[k], 4) for k in HEADLINE}
        return {**shown, "n": metrics["n"], "tied_pairs": metrics["tied_pairs"]}

    def warnings(self, outcome: Outcome) -> list[str]:
        out = list(self.warned)
        before, after = outcome.test_before or {}, outcome.test or {}
        if after and before and after["pairwise_accuracy"] <= before["pairwise_accuracy"]:
            out.append(
                f"pairwise accuracy on the held-out pairs did not rise ({before['pairwise_accuracy']:.3f} "
                f"before training, {after['pairwise_accuracy']:.3f} after): more steps, another "
                "training.learning_rate, or more pairs"
            )
        if after and after["n"] < FEW_TEST_PAIRS:
            out.append(
                f"only {after['n']} held-out pairs: one pair moves the accuracy by "
                f"{100 / after['n']:.1f} points; hold out more (data.test or data.split.test)"
            )
        return out


def read_pairs(recipe: RlhfRecipe, splits: Splits, template: Template | None) -> dict[str, SplitPairs]:
    """Each split's pairs and tied pairs as text (validation only when it has rows). A split
    without pairs is exit 2 naming its key; so is having no held-out pairs at all."""
    data = recipe.data
    if not splits.test.rows and data.test is None and not (data.split and data.split.test):
        raise BadInput(
            "stage reward reports pairwise accuracy on held-out pairs: set data.test (a file of pairs "
            "or rankings) or data.split.test (a share of data.train, e.g. 0.1)",
            file=source_of(recipe),
            key="data.test",
        )
    out = {}
    for name in ("train", "validation", "test"):
        rows: Rows = getattr(splits, name)
        if name != "train" and not rows.rows and getattr(data, name) is None:
            continue  # not asked for (validation), or carved empty (refused by load_splits)
        key = f"data.{name}" if name == "train" or getattr(data, name) is not None else f"data.split.{name}"
        prefs = preferences_of(
            rows,
            skip_bad_rows=data.skip_bad_rows,
            key=key,
            prompt_field=template is None,
            aggregate=data.aggregate,
        )
        out[name] = pair_texts(prefs, template)
    return out


def pair_texts(prefs: Preferences, template: Template | None) -> SplitPairs:
    """The pairs of one split with each row's prompt text (data.template rendered, else its
    `prompt` field), rendered once per row."""
    prompts: dict[int, str] = {}

    def prompt(group: int, where: str) -> str:
        if group not in prompts:
            prompts[group] = common.prompt_text(prefs.rows[group], template, where)
        return prompts[group]

    return SplitPairs(
        [PairText(prompt(p.group, p.where), p.chosen, p.rejected, p.distance, p.where) for p in prefs.pairs],
        [PairText(prompt(t.group, t.where), t.first, t.second, 0, t.where) for t in prefs.ties],
        prefs.counts(),
    )


def preference_columns(pairs: list[PairText], margin: str) -> dict[str, list[Any]]:
    """The texts the reward model compares (prompt + chosen, prompt + rejected) and, with
    `margin: rank_distance`, each pair's margin: the tiers between its two responses (1 for
    adjacent tiers and plain pairs). `none` gives no margin column: RewardTrainer then uses none."""
    columns: dict[str, list[Any]] = {
        "chosen": [p.prompt + p.first for p in pairs],
        "rejected": [p.prompt + p.second for p in pairs],
    }
    if margin == "rank_distance":
        columns["margin"] = [float(p.distance) for p in pairs]
    return columns


def tokenized(columns: dict[str, list[Any]], tokenizer: Any, max_length: int) -> Any:
    """A datasets.Dataset of chosen_ids / rejected_ids (and margin), each text tokenized as
    `RewardScorer` tokenizes it for scoring."""
    import datasets

    def ids(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    data = {"chosen_ids": ids(columns["chosen"]), "rejected_ids": ids(columns["rejected"])}
    if "margin" in columns:
        data["margin"] = columns["margin"]
    return datasets.Dataset.from_dict(data)


def score_pairs(scorer: Any, split: SplitPairs) -> Scored:
    """Scores of both responses of every strict and tied pair (one batched pass)."""
    items = split.pairs + split.ties
    prompts = [p.prompt for p in items] * 2
    scores = scorer.score(prompts, [p.first for p in items] + [p.second for p in items])
    first, second, k = scores[: len(items)], scores[len(items) :], len(split.pairs)
    return Scored(split.pairs, first[:k], second[:k], split.ties, list(zip(first[k:], second[k:])))


def pairwise_metrics(scored: Scored) -> Metrics:
    """pairwise_accuracy: the share of pairs whose chosen response scores above the rejected one
    (an equal score counts as half: the model did not tell them apart); pair_gap: mean
    r(chosen) - r(rejected); tie_gap: mean |r(a) - r(b)| over tied pairs (None without ties)."""
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(scored.chosen, scored.rejected)]
    ties = scored.tie_scores
    return {
        "pairwise_accuracy": fmean(wins),
        "pair_gap": fmean(c - r for c, r in zip(scored.chosen, scored.rejected)),
        "tie_gap": fmean(abs(a - b) for a, b in ties) if ties else None,
        "mean_reward_chosen": fmean(scored.chosen),
        "mean_reward_rejected": fmean(scored.rejected),
        "n": len(scored.pairs),
        "tied_pairs": len(ties),
    }
