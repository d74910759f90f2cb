"""What every inference engine answers, whatever runs the model (transformers, vLLM, ONNX Runtime,
llama.cpp): the jobs hold an `InferenceEngine` and never an engine class.

An engine is one module under `llmtune.inference` with an `open_engine(request)` function (and
optionally `require(key)` for its extra and `check_model(request_or_info)` for the models it
serves), named once in `llmtune.inference.registry.ENGINES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from llmtune.errors import BadInput


@dataclass
class Generation:
    """What one prompt produced: `num_return_sequences` texts and the tokens generated for them."""

    texts: list[str]
    new_tokens: int


@dataclass
class ChoiceScores:
    """Log-likelihood of each choice given one prompt, in the order the choices were given."""

    logprob_sum: list[float]
    logprob_mean: list[float]
    num_tokens: list[int]


@dataclass(frozen=True)
class Supports:
    """What an engine can do with the model it holds (the jobs check this, not the class)."""

    generate: bool
    """`generate` (causal LMs)."""
    choices: bool
    """`score_choices` and `classify` by log-likelihood (causal LMs)."""
    heads: bool
    """`classify` / `score` through a sequence-classification or regression head."""
    description: str = ""
    """One line for the plan and the docs (runtime, precision)."""


@dataclass
class EngineRequest:
    """Everything an engine factory may need to open a model for a job. `loaded`: the model
    when the job has loaded it already (engine hf uses it as it is; others may save it)."""

    ref: Any
    """The recipe's `ModelRef` (path, scratch, dtype, threads, quantization)."""
    recipe: Any
    """The whole recipe (seed, scratch vocabulary)."""
    head: Literal["causal_lm", "classification", "regression"] = "causal_lm"
    """The model's head, to load it with (distill's teacher on engine onnx may be a regression head)."""
    loaded: Any = None
    labels: list[str] | None = None
    """Label names to load a classification head with."""
    batch_size: int | Literal["auto"] = "auto"
    max_batch_tokens: int = 16384
    max_length: int = 2048
    max_new_tokens: int = 1
    label_range: tuple[float, float] | None = None
    key: str = "model"
    """The recipe key that names the model, for error messages."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Engine-specific recipe sections by engine name (e.g. {"vllm": VllmSettings})."""
    merge_adapters: bool = False
    """Fold a LoRA adapter into the weights (safe when this engine owns the model)."""


@runtime_checkable
class InferenceEngine(Protocol):
    """The methods the jobs call. Prompts come in as text; results come back in input order."""

    classifier: bool
    """The model has a sequence-classification head (classify / score go through it)."""
    regression: bool
    """The head has one output that predicts a number (`score`)."""
    max_length: int
    supports: Supports

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt (no second BOS after a rendered chat template)."""
        ...

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        """Prompt lengths in tokens, before truncation (to apply `on_too_long`)."""
        ...

    def apply_chat_template(self, prompt: str, system: str | None = None) -> str:
        """The prompt as the user turn of the tokenizer's chat template (BadInput if none)."""
        ...

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        stop: Sequence[str] = (),
        num_return_sequences: int = 1,
        seed: int = 0,
    ) -> list[Generation]:
        """One Generation per prompt: greedy at temperature 0, else seeded sampling."""
        ...

    def score_choices(self, prompts: list[str], choices: list[str]) -> list[ChoiceScores]:
        """Log-likelihood of each choice as the continuation of each prompt."""
        ...

    def classify(self, prompts: list[str], labels: list[str]) -> list[dict[str, float]]:
        """A probability per label for each prompt (soft labels)."""
        ...

    def score(self, prompts: list[str]) -> list[float]:
        """The number a regression head predicts for each prompt."""
        ...

    def head_labels(self) -> list[str]:
        """The classification head's label names, in output order."""
        ...

    def close(self) -> None:
        """Free what the engine holds (processes, temporary folders); idempotent."""
        ...


def chat_prompt(tokenizer: Any, prompt: str, system: str | None, model_name: str | None) -> str:
    """`prompt` as the user turn (after `system`) of the tokenizer's chat template, ready for the
    reply; BadInput when the tokenizer has none (every engine renders chat prompts this way)."""
    if not getattr(tokenizer, "chat_template", None):
        raise BadInput(
            f"chat: true but the tokenizer of {model_name or 'this model'} has no chat template; use a "
            "chat/instruct model or chat: false",
            key="chat",
        )
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a prompt, special tokens as the model expects them (untruncated); a prompt
    that already starts with the BOS text (a rendered chat template) gets no second BOS."""
    bos = tokenizer.bos_token
    add_special = not (bos and prompt.startswith(bos))
    return tokenizer(prompt, add_special_tokens=add_special)["input_ids"]


def split_continuations(
    encode: Any, prompt: str, choices: list[str], max_length: int
) -> tuple[list[int], list[list[int]]]:
    """A prompt's context tokens and each choice's continuation tokens, split as
    lm-evaluation-harness does: trailing whitespace of the prompt moves to the choice, `prompt +
    choice` is tokenized whole and the choice's tokens are those after the prompt's. The context
    keeps its last tokens so that context + the longest choice fits `max_length`."""
    n_spaces = len(prompt) - len(prompt.rstrip())
    context = prompt[: len(prompt) - n_spaces]
    moved = prompt[len(context) :]
    context_enc = encode(context)
    conts = []
    for choice in choices:
        whole = encode(context + moved + choice)
        conts.append(whole[len(context_enc) :] or whole[-1:])
    room = max(1, max_length - max(len(c) for c in conts))
    return context_enc[-room:], conts


def separated_choices(prompts: list[str], labels: list[str]) -> list[tuple[list[int], list[str]]]:
    """Groups of prompt indices with the choices to score them with: prompts ending in whitespace
    get the bare labels, the rest `" " + label` (how every engine classifies with a causal LM)."""
    bare = [i for i, p in enumerate(prompts) if p[-1:].isspace()]
    spaced = [i for i, p in enumerate(prompts) if not p[-1:].isspace()]
    return [(ix, ch) for ix, ch in ((bare, labels), (spaced, [" " + x for x in labels])) if ix]


def separated_scores(
    score_choices: Callable[[list[str], list[str]], list[ChoiceScores]], prompts: list[str], labels: list[str]
) -> list[ChoiceScores]:
    """Each prompt's scores of `labels` as its continuation, in input order: `score_choices` (an
    engine's) is called once per group of `separated_choices`."""
    scored: list[ChoiceScores | None] = [None] * len(prompts)
    for indices, choices in separated_choices(prompts, labels):
        for i, s in zip(indices, score_choices([prompts[i] for i in indices], choices)):
            scored[i] = s
    return scored  # type: ignore[return-value]  # the groups cover every prompt


def label_probabilities(
    score_choices: Callable[[list[str], list[str]], list[ChoiceScores]], prompts: list[str], labels: list[str]
) -> list[dict[str, float]]:
    """How an engine classifies with a causal LM: per prompt, a softmax over the labels'
    log-likelihood sums (`separated_scores`)."""
    return [
        dict(zip(labels, softmax(s.logprob_sum))) for s in separated_scores(score_choices, prompts, labels)
    ]


def softmax(values: list[float]) -> list[float]:
    """Probabilities from log-likelihoods or logits (in Python floats)."""
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def dedupe(prompts: Sequence[str]) -> tuple[list[str], list[int]]:
    """Unique prompts in first-seen order, and for each input its unique prompt's index."""
    index: dict[str, int] = {}
    where = [index.setdefault(p, len(index)) for p in prompts]
    return list(index), where
