"""The `prompt-eval` recipe: zero-, one- and few-shot prompts and models on a labelled set."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from llmtune.recipes.common import Data, ModelRef, RecipeBase, Section
from llmtune.recipes.engines import VllmSettings
from llmtune.recipes.paths import RecipePath
from llmtune.recipes.prompt_eval_checks import Assertion, Judge, Statistics
from llmtune.slices import recipe_gates

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "invalid_rate")
REFERENCE_METRICS = ("exact_match", "contains", "chrf", "bleu", "rouge_l")
FREE_TEXT_METRICS = (*REFERENCE_METRICS, "pass_rate", "judge_score")


def template_variables(source: str) -> set[str] | None:
    """Variables a Jinja2 template reads, or None when it does not parse (the job reports that)."""
    import jinja2
    from jinja2 import meta

    try:
        return set(meta.find_undeclared_variables(jinja2.Environment().parse(source)))
    except jinja2.TemplateSyntaxError:
        return None


class Batching(Section):
    """How the shared inference engine groups rows into batches."""

    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """Rows per batch; auto fills the token budget and halves the batch on out-of-memory."""
    max_batch_tokens: int = Field(16384, ge=16)
    """Token budget of one batch (prompt + label or generated tokens, padding included)."""


class PromptSpec(Section):
    """One way of asking the model."""

    template: str
    """Sandboxed Jinja2 template over the row's fields; {{ examples }} receives the rendered shots and
    {{ labels }} the label names."""
    shots: int = Field(0, ge=0)
    """Examples put in front of each row (0: zero-shot)."""
    examples_from: RecipePath | list[RecipePath] | None = None
    """File(s) of example rows, relative to this file (same columns as the data); default: the
    train split."""
    example_template: str = "{{ text }} {{ label }}\n\n"
    """How one example is rendered into {{ examples }} (chat: false)."""
    selection: Literal["first", "random", "balanced"] = "balanced"
    """How examples are chosen: the pool's first rows, a seeded random draw per row, or a seeded draw
    with labels as even as possible. Never the row being scored."""
    chat: bool = False
    """Apply the model's chat template; the examples become user/assistant turns."""
    system: str | None = None
    """System message (chat: true)."""

    @model_validator(mode="after")
    def _examples_slot(self) -> PromptSpec:
        used = template_variables(self.template)
        if self.shots > 0 and not self.chat and used is not None and "examples" not in used:
            raise ValueError(
                f"shots is {self.shots} but the template has no {{{{ examples }}}} slot to put them in"
            )
        return self


class PromptEvalRecipe(RecipeBase):
    """Compare prompts and models on the same labelled rows, side by side."""

    kind: Literal["prompt-eval"] = "prompt-eval"
    """Which job this recipe is for."""
    models: dict[str, ModelRef]
    """Models to compare, by name (base, base + adapter, another model); each is loaded once."""
    data: Data
    """The labelled rows scored (data.test, or carved from data.train by split); train is the default
    example pool."""
    task: Literal["classification", "free_text"] = "classification"
    """classification: the answer is one of `labels`; free_text: generated text, compared to the gold
    answer (in the label field) by exact_match, contains, chrF, BLEU and ROUGE-L, checked by
    `assertions` and scored by a `judge` (needs scoring: generate)."""
    labels: list[str] | None = None
    """Label names; inferred from the scored rows when omitted."""
    prompts: dict[str, PromptSpec]
    """Prompts to compare, by name."""
    scoring: Literal["choices", "generate"] = "choices"
    """Causal LMs. choices: log-likelihood of each label as the continuation; generate: greedy text,
    normalised (first line, stripped, lower case) and matched to a label. Sequence-classification
    models always use their head's probabilities."""
    choice_normalization: Literal["sum", "mean", "chars"] = "sum"
    """choices: predict by the summed log-likelihood of the label's tokens (lm-evaluation-harness's
    acc), by the mean per token, or by the sum per character of the label (lm-eval's acc_norm).
    The sums and means are recorded in predictions.jsonl either way."""
    choice_prefix: str | None = None
    """choices: text put between prompt and label (lm-evaluation-harness's target_delimiter); default
    a space, or nothing for chat prompts."""
    answer_pattern: str | None = None
    """generate: regex searched in the output; its first group (or the whole match) is the answer
    (RE2 syntax: no backreferences or lookaround; it runs in linear time)."""
    max_new_tokens: int = Field(16, ge=1)
    """generate: tokens generated per row."""
    metrics: list[str] = Field(default_factory=lambda: ["accuracy", "precision", "recall", "f1"])
    """Metrics shown in the table and chart, each with its interval and paired tests; the first ranks
    the pairs. classification: accuracy, precision, recall, f1, invalid_rate. free_text: exact_match,
    contains, chrf, bleu, rouge_l (0-1; chrf and bleu are sacrebleu's score / 100), pass_rate (every
    assertion passes), pass_rate:NAME (one assertion), judge_score. free_text default: chrf, bleu,
    rouge_l, exact_match, then pass_rate and judge_score when there are assertions and a judge."""
    assertions: list[Assertion] = Field(default_factory=list)
    """free_text: checks on every output, e.g. [{type: is_json}, {type: max_length, value: 200}]."""
    judge: Judge | None = None
    """free_text: a model that scores every output by a rubric; with data.columns.human_score (and a
    completion column: the text people scored) its agreement with people is reported too."""
    statistics: Statistics = Field(default_factory=Statistics)
    """Intervals (Wilson for proportions, bootstrap for the rest) and paired tests between prompts and
    models on the same rows (McNemar for proportions, paired bootstrap for the rest)."""
    model_heads: dict[str, Literal["causal_lm", "classification"]] = Field(default_factory=dict)
    """Force a model's head by name; default: from its config (a sequence classifier or a bare encoder
    is scored by its classification head, anything else as a causal LM)."""
    batching: Batching = Field(default_factory=Batching)
    """How rows are grouped into batches by the shared inference engine."""
    engine: Literal["hf", "vllm", "onnx"] = "hf"
    """How causal LMs are run: hf (transformers, in this process) or vllm (vLLM's offline LLM; pip install
    'llmtune[vllm]'); onnx runs every model on ONNX Runtime, exported once into a cache (heads and
    scoring: choices, not generate; pip install 'llmtune[onnx]')."""
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    """engine: vllm settings."""

    slices: list[str] = Field(default_factory=list)
    """Columns of the scored rows (e.g. language, product_category): every metric is also reported
    per value of each, for every pair, with row counts and the gap between the best and the worst
    slice, because bias in data becomes bias in answers."""
    fail_under: dict[str, float] = Field(default_factory=dict)
    """Quality gate, e.g. {accuracy: 0.8, f1@language: 0.6, f1@language=de: 0.7} (a metric, every
    slice of a column, one slice); merged with --fail-under. Exit code 1 when it is not met."""
    fail_when: Literal["best", "any"] = "best"
    """best: the gate fails when even the best pair is below; any: when any pair is below."""

    @field_validator("answer_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            from llmtune.recipes.patterns import compile_pattern

            compile_pattern(value)  # RE2: linear time; ValueError names what it cannot run
        return value

    @field_validator("data")
    @classmethod
    def _no_data_template(cls, value: Data) -> Data:
        if value.template is not None:
            raise ValueError("prompt-eval reads its templates from prompts.NAME.template, not data.template")
        return value

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (len(value) < 2 or len(set(value)) != len(value)):
            raise ValueError("expected at least two distinct labels")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PromptEvalRecipe:
        if not self.models:
            raise ValueError("models needs at least one entry")
        if not self.prompts:
            raise ValueError("prompts needs at least one entry")
        unknown = sorted(set(self.model_heads) - set(self.models))
        if unknown:
            raise ValueError(f"model_heads names {unknown}, which are not in models")
        if self.task == "free_text":
            if self.scoring != "generate":
                raise ValueError("task free_text needs scoring: generate (there are no labels to score)")
            if "metrics" not in self.model_fields_set:
                self.metrics = ["chrf", "bleu", "rouge_l", "exact_match"]
                self.metrics += ["pass_rate"] * bool(self.assertions) + ["judge_score"] * bool(self.judge)
        elif self.assertions or self.judge:
            raise ValueError("assertions and judge check generated text: they need task: free_text")
        names = [a.label for a in self.assertions]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"assertions {twice} share a name; give each a distinct name")
        allowed = gate_metrics(self)
        wrong = [m for m in self.metrics if m not in allowed]
        if wrong:
            raise ValueError(f"metrics {wrong} do not apply to this recipe; use some of {list(allowed)}")
        if len(set(self.slices)) != len(self.slices):
            raise ValueError(f"slices {self.slices} name a column twice")
        recipe_gates(self.fail_under, allowed, self.slices)
        return self


def gate_metrics(recipe: PromptEvalRecipe) -> tuple[str, ...]:
    """The metrics the recipe measures, which its table and a quality gate may name (pass rates only
    with assertions, judge_score only with a judge; gates refuse lower-is-better ones)."""
    if recipe.task == "classification":
        return CLASSIFICATION_METRICS
    names = [a.label for a in recipe.assertions]
    checks = ["pass_rate", *(f"pass_rate:{n}" for n in names)] if names else []
    return (*REFERENCE_METRICS, *checks, *(["judge_score"] if recipe.judge else []))
