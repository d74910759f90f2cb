"""Scoring one model x prompt pair through the shared inference engine, and its metrics.

How a row is scored depends on the model's head:
- sequence-classification models: the head's softmax over the labels (the prompt shapes the text
  the head reads);
- causal LMs, `scoring: choices`: the log-likelihood of each label as the prompt's continuation,
  summed and per token (both recorded, as lm-evaluation-harness does), the prediction by one of them;
- causal LMs, `scoring: generate`: greedy text, normalised (first non-empty line, stripped, lower
  case, trailing punctuation dropped) or extracted by `answer_pattern`, then matched to a label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmtune.inference.interface import softmax
from llmtune.metrics import classification_metrics
from llmtune.recipes.patterns import compile_pattern
from llmtune.recipes.prompt_eval import PromptEvalRecipe

INVALID = "(no label)"


@dataclass
class Scored:
    """What a model said about one row."""

    prediction: str | None
    scores: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def scoring_method(recipe: PromptEvalRecipe, head: str) -> str:
    """How a model with `head` is scored: classifier-head, choices or generate."""
    return "classifier-head" if head == "classification" else recipe.scoring


def score_prompts(
    engine: Any,
    method: str,
    recipe: PromptEvalRecipe,
    prompts: list[str],
    labels: list[str] | None,
    *,
    chat: bool = False,
) -> list[Scored]:
    """Score every prompt with the engine, in input order."""
    if method == "classifier-head":
        assert labels is not None
        out = []
        for probs in engine.classify(prompts, labels):
            out.append(Scored(max(labels, key=lambda label: probs[label]), dict(probs)))
        return out
    if method == "choices":
        assert labels is not None
        return _by_choices(engine, recipe, prompts, labels, chat)
    generations = engine.generate(prompts, max_new_tokens=recipe.max_new_tokens, temperature=0.0)
    out = []
    for gen in generations:
        text = gen.texts[0]
        answer = extract_answer(text, recipe.answer_pattern)
        prediction = match_label(answer, labels) if labels is not None else answer
        out.append(Scored(prediction, {}, {"output": text}))
    return out


def choice_prefix(recipe: PromptEvalRecipe, prompt: str, chat: bool) -> str:
    """What goes between a prompt and each label: the recipe's, else a space unless the prompt
    already ends with whitespace or is a chat prompt (the reply starts a new turn)."""
    if recipe.choice_prefix is not None:
        return recipe.choice_prefix
    return "" if chat or prompt[-1:].isspace() else " "


def _by_choices(
    engine: Any, recipe: PromptEvalRecipe, prompts: list[str], labels: list[str], chat: bool
) -> list[Scored]:
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(choice_prefix(recipe, prompt, chat), []).append(i)
    out: list[Scored | None] = [None] * len(prompts)
    for prefix, indices in groups.items():
        choices = [prefix + label for label in labels]
        for i, choice in zip(indices, engine.score_choices([prompts[i] for i in indices], choices)):
            used = normalised_logprobs(choice, labels, recipe.choice_normalization)
            best = max(range(len(labels)), key=lambda k: used[k])
            out[i] = Scored(
                labels[best],
                dict(zip(labels, softmax(used))),
                {
                    "logprob_sum": dict(zip(labels, choice.logprob_sum)),
                    "logprob_mean": dict(zip(labels, choice.logprob_mean)),
                    "num_tokens": dict(zip(labels, choice.num_tokens)),
                },
            )
    return out  # type: ignore[return-value]


def normalised_logprobs(choice: Any, labels: list[str], how: str) -> list[float]:
    """The log-likelihoods a prediction compares: summed over the label's tokens (lm-eval's acc),
    per token (mean), or per character of the label (lm-eval's acc_norm: the sum divided by the
    length of the choice text, without the delimiter)."""
    if how == "sum":
        return list(choice.logprob_sum)
    if how == "mean":
        return list(choice.logprob_mean)
    return [total / max(len(label), 1) for total, label in zip(choice.logprob_sum, labels)]


def normalise(text: str) -> str:
    """First non-empty line, stripped, lower case, without trailing punctuation or quotes."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first.strip(" \t\"'`*").rstrip(".,;:!?").strip(" \"'`*").lower()


def extract_answer(text: str, pattern: str | None) -> str:
    """The answer in a generated text: `pattern`'s first group (or match), else its first line."""
    if pattern is not None:
        found = compile_pattern(pattern).search(text)
        if found is None:
            return ""
        text = found.group(1) if found.groups() else found.group(0)
    return normalise(text)


def match_label(answer: str, labels: list[str]) -> str | None:
    """The label the answer names exactly (ignoring case), or None: an invalid answer."""
    for label in labels:
        if answer == label.lower().strip():
            return label
    return None


def pair_metrics(
    gold: list[str], predicted: list[str | None], labels: list[str] | None, method: str
) -> dict[str, Any]:
    """Metrics of one pair: scikit-learn's for labels (plus the invalid rate), or free-text matches."""
    if labels is None:
        pairs = [(normalise(g), normalise(p or "")) for g, p in zip(gold, predicted)]
        n = len(pairs)
        return {
            "exact_match": sum(g == p for g, p in pairs) / n,
            "contains": sum(bool(g) and g in p for g, p in pairs) / n,
            "n": n,
        }
    filled = [p if p is not None else INVALID for p in predicted]
    metrics = classification_metrics(gold, filled, labels)
    if method == "generate":
        from sklearn.metrics import confusion_matrix

        metrics["invalid_rate"] = sum(p is None for p in predicted) / len(predicted)
        # an extra column for answers that named no label (they count as wrong everywhere)
        matrix = confusion_matrix(gold, filled, labels=[*labels, INVALID])[: len(labels)]
        metrics["confusion_matrix"] = {"labels": [*labels, INVALID], "matrix": matrix.tolist()}
    return metrics
