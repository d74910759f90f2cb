"""The `finetune` recipe: adapt a model on task examples."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from llmtune.recipes.common import ModelRef, RecipeBase, Section, Training
from llmtune.recipes.distributed import Distributed
from llmtune.recipes.methods import MERGEABLE, PROMPT_LEARNING, MethodSpec
from llmtune.recipes.paths import RecipePath, TemplateSource
from llmtune.recipes.sources import MixtureData

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")
REGRESSION_METRICS = ("mae", "rmse", "r2", "pearson", "spearman")
CAUSAL_LM_METRICS = ("exact_match", "perplexity")
TASK_METRICS = {
    "classification": CLASSIFICATION_METRICS,
    "regression": REGRESSION_METRICS,
    "causal_lm": CAUSAL_LM_METRICS,
}


class Evaluation(Section):
    """Metrics computed on the test split at the end."""

    metrics: list[str] | None = None
    """classification: accuracy, precision, recall, f1; regression: mae, rmse, r2, pearson,
    spearman; causal_lm: exact_match, perplexity."""
    max_new_tokens: int = Field(32, ge=1)
    """causal_lm exact match: tokens generated per test prompt."""
    slices: list[str] = Field(default_factory=list)
    """Columns of the test rows (e.g. language, product_category): every metric is also reported
    per value of each, with row counts and the gap between the best and the worst slice, because
    bias in data becomes bias in models. Gate on one with --fail-under f1@language=de=0.8."""
    retain: RecipePath | list[RecipePath] | None = None
    """General-data test file(s) measured before and after training (loss, and the task's metrics
    where they apply), so the report shows what the model forgot."""


class FinetuneData(MixtureData):
    """Where rows come from: one training set, or a weighted mixture of sources, plus replay."""


class Export(Section):
    """What to write to model/ besides the adapter."""

    merge_adapter: bool = False
    """Merge a LoRA adapter into the base weights and save a standalone model."""


class Range(Section):
    """A range sampled by a random or TPE sweep. Bounds written as integers (`{low: 4, high: 32}`)
    give integers (ranks, batch sizes); a bound with a decimal point or exponent
    (`{low: 1.0e-5, high: 1.0e-3}`) gives floats."""

    low: int | float
    """Smallest value."""
    high: int | float
    """Largest value."""
    log: bool = False
    """Sample on a log scale (learning rates)."""

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low >= self.high or (self.log and self.low <= 0):
            raise ValueError("expected low < high (and low > 0 with log: true)")
        return self

    def integers(self) -> bool:
        """Whether the range holds integers (both bounds written as integers)."""
        return isinstance(self.low, int) and isinstance(self.high, int)


class Pruning(Section):
    """tpe: when a trial is stopped early. At each evaluation the trial's validation metric is
    compared with earlier finished trials at the same step (Optuna's PercentilePruner; 50 is
    Optuna's MedianPruner)."""

    percentile: float = Field(50.0, gt=0.0, lt=100.0)
    """Stop a trial worse than this percentile of finished trials at the same step (50: the median;
    25: stop more, keeping only trials in the best quarter)."""
    min_trials: int = Field(5, ge=1)
    """Finished trials needed before any trial is stopped."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of each trial before it may be stopped."""


class Sweep(Section):
    """Hyperparameter search: each trial is a run; the best on the validation metric wins."""

    strategy: Literal["grid", "random", "tpe"] = "grid"
    """grid: every combination of the values; random: `trials` samples; tpe: Optuna's TPE sampler,
    which proposes each trial from the results so far, with pruning of bad trials; its study is
    kept in <run>/study.db, so an interrupted sweep continues with --resume."""
    params: dict[str, list[Any] | Range]
    """Recipe key (dotted, as for --set) -> values to try, or {low, high, log} for random / tpe."""
    trials: int | None = Field(None, ge=1)
    """random / tpe: number of trials (default 8); grid: run at most this many combinations."""
    metric: str | None = None
    """Validation metric to optimise (default: training.early_stopping.metric, else eval_loss)."""
    seed: int = 0
    """Seed of the random / TPE sampler."""
    pruning: bool | Pruning = True
    """tpe: stop a trial early when its validation metric, reported at each evaluation, is worse
    than the median of earlier trials at the same step (Optuna's MedianPruner); false: never;
    {percentile, min_trials, warmup_steps} to tune it. Set training.eval_steps so that trials
    evaluate more than once."""
    startup_trials: int | None = Field(None, ge=1)
    """tpe: trials sampled at random before TPE models the results (default: a quarter of
    `trials`, at least 2; Optuna's own default of 10 would make a small sweep purely random)."""
    timeout: float | None = Field(None, gt=0)
    """Start no new trial after this many seconds of this invocation (the first trial always
    runs; a resumed sweep counts again from its start)."""
    n_jobs: Literal[1] = 1
    """tpe: trials run one at a time (one process owns the device)."""

    @field_validator("params")
    @classmethod
    def _searchable(cls, params: dict[str, list[Any] | Range], info: ValidationInfo) -> dict:
        if not params:
            raise ValueError("params needs at least one key to search")
        for key, values in params.items():
            if isinstance(values, Range) and info.data.get("strategy") == "grid":
                raise ValueError(
                    f"{key}: a {{low, high}} range needs strategy: random or tpe; give a list for grid"
                )
            if isinstance(values, list) and not values:
                raise ValueError(f"{key}: give at least one value")
            if info.data.get("strategy") == "tpe" and isinstance(values, list):
                nested = [v for v in values if not isinstance(v, str | int | float | bool | None)]
                if nested:
                    raise ValueError(
                        f"{key}: tpe chooses among plain values (numbers, strings, booleans, null), "
                        f"not {nested[0]!r}; use strategy: grid or random for lists and mappings"
                    )
        return params

    @model_validator(mode="after")
    def _tpe_only(self) -> Sweep:
        if self.strategy != "tpe" and self.startup_trials is not None:
            raise ValueError("startup_trials is for strategy: tpe")
        if self.strategy != "tpe" and isinstance(self.pruning, Pruning):
            raise ValueError("pruning settings are for strategy: tpe")
        return self


class FinetuneRecipe(RecipeBase):
    """Adapt a model on task examples: classification head or causal-LM SFT."""

    kind: Literal["finetune"] = "finetune"
    """Which job this recipe is for."""
    task: Literal["classification", "regression", "causal_lm"] = "classification"
    """classification: a head with N labels; regression: a head with one output that predicts a
    number; causal_lm: supervised fine-tuning of a language model."""
    model: ModelRef
    """The model to adapt."""
    labels: list[str] | None = None
    """classification: the label names in order; inferred from train when omitted."""
    label_range: tuple[float, float] | None = None
    """regression: [low, high] of the label; the head learns the label scaled to 0..1 and its
    predictions are scaled back. Default: no scaling."""
    loss: Literal["mse", "huber"] = "mse"
    """regression: mean squared error, or Huber (less hurt by outliers)."""
    method: MethodSpec = Field(default_factory=MethodSpec)
    """How the model is adapted."""
    data: FinetuneData
    """Training, validation and test rows."""
    training: Training = Field(default_factory=Training)
    """Optimisation settings."""
    distributed: Distributed = Field(default_factory=Distributed)
    """Under torchrun / accelerate launch with several processes: ddp, fsdp or deepspeed."""
    evaluation: Evaluation = Field(default_factory=Evaluation)
    """Final evaluation on the test split."""
    export: Export = Field(default_factory=Export)
    """What is written to model/."""
    chat_template: TemplateSource | None = None
    """causal_lm messages rows: a Jinja chat template when the tokenizer has none; the template
    text, or a .jinja / .j2 file relative to this file."""
    sweep: Sweep | None = None
    """Search hyperparameters instead of one run (same as --sweep FILE)."""

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneRecipe:
        if self.data.train is None:
            raise ValueError("data.train is required for finetune")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if self.labels is not None and len(self.labels) < 2:
            raise ValueError("labels needs at least two entries")
        if self.task != "classification" and self.labels:
            raise ValueError(f"labels are for task: classification, not {self.task}")
        if self.task != "regression" and self.label_range is not None:
            raise ValueError("label_range is for task: regression")
        if self.label_range is not None and self.label_range[0] >= self.label_range[1]:
            raise ValueError("label_range: expected [low, high] with low < high")
        if self.task == "causal_lm" and self.evaluation.slices:
            raise ValueError(
                "evaluation.slices are measured for classification and regression, not causal_lm"
            )
        allowed = TASK_METRICS[self.task]
        bad = [m for m in self.evaluation.metrics or [] if m not in allowed]
        if bad:
            raise ValueError(
                f"evaluation.metrics {bad} do not apply to task {self.task}; "
                f"expected some of {', '.join(allowed)}"
            )
        if self.method.type == "qlora" and self.model.quantization == "8bit":
            raise ValueError("qlora loads the base in 4bit; remove model.quantization: 8bit")
        if self.method.init_text and self.method.type != "prompt":
            raise ValueError("method.init_text is only for method.type: prompt")
        self._check_training()
        if self.export.merge_adapter and self.method.type not in MERGEABLE:
            raise ValueError(
                f"export.merge_adapter: a {self.method.type} model has no adapter to merge; "
                f"merging works for {', '.join(MERGEABLE)}"
            )
        return self

    def _check_training(self) -> None:
        training = self.training
        if training.packing and self.task != "causal_lm":
            raise ValueError("training.packing is for task: causal_lm")
        if training.packing and self.method.type in PROMPT_LEARNING:
            raise ValueError(
                f"training.packing does not work with method {self.method.type}: the virtual tokens are "
                "prepended once per sequence, so packed examples would share them"
            )
        if training.early_stopping is not None:
            if not self.has_validation():
                raise ValueError(
                    "training.early_stopping needs validation rows: set data.validation or data.split.validation"
                )
            training.early_stopping.metric = self.validation_metric(training.early_stopping.metric)

    def has_validation(self) -> bool:
        """Whether the recipe gives or carves validation rows."""
        return self.data.validation is not None or bool(self.data.split and self.data.split.validation)

    def validation_metric(self, name: str) -> str:
        """`name` as the Trainer logs it (eval_ prefix), refused when this task does not compute it."""
        name = name if name.startswith("eval_") else f"eval_{name}"
        allowed = ["eval_loss"]
        if self.task != "causal_lm":
            allowed += [f"eval_{m}" for m in TASK_METRICS[self.task]]
        if name not in allowed:
            raise ValueError(
                f"validation metric {name!r} is not computed for {self.task}; expected one of {allowed}"
            )
        return name

    def metric_names(self) -> list[str]:
        """Metrics to report on the test split."""
        if self.evaluation.metrics:
            return list(self.evaluation.metrics)
        return list(TASK_METRICS[self.task])
