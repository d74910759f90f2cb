"""The parity gate: the export, run by its own runtime with its own tokenizer, against the run's
model run by transformers, on the same rows.

Heads: label agreement, the largest probability difference, and the run's metrics recomputed on
both sides; regression heads: the largest difference in the label's units and the Spearman
correlation of the two; causal LMs: greedy continuations of each prompt (share of tokens that
agree before the first divergence, identical continuations) and the mean log-likelihood per
token of reference texts. Each figure has a threshold per format and quantisation (THRESHOLDS),
which `--threshold NAME=VALUE` overrides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from llmtune.errors import BadInput

# name: (figure, "min" or "max"); the defaults below are per format/quantisation
LIMITS = {
    "min_label_agreement": ("label_agreement", "min"),
    "max_prob_diff": ("max_prob_diff", "max"),
    "max_abs_diff": ("max_abs_diff", "max"),
    "min_spearman": ("spearman", "min"),
    "min_token_agreement": ("token_agreement", "min"),
    "max_loglik_diff": ("loglik_diff", "max"),
}
FULL = {
    "min_label_agreement": 0.99,
    "max_prob_diff": 0.01,
    "max_abs_diff": 0.01,
    "min_spearman": 0.999,
    "min_token_agreement": 0.99,
    "max_loglik_diff": 0.01,
}
THRESHOLDS: dict[str, dict[str, float]] = {
    "hf": FULL,
    "onnx": FULL,
    "onnx-int8": {**FULL, "min_label_agreement": 0.97, "max_prob_diff": 0.25, "max_abs_diff": 0.1}
    | {"min_spearman": 0.98, "min_token_agreement": 0.8, "max_loglik_diff": 0.1},
    "gguf-f16": {**FULL, "min_token_agreement": 0.95, "max_loglik_diff": 0.005},
    "gguf-q8_0": {**FULL, "min_token_agreement": 0.8, "max_loglik_diff": 0.02},
}
"""The default thresholds per format (and quantisation); docs/export.md explains them."""


class HeadRunner(Protocol):
    def head_logits(self, texts: list[str]) -> np.ndarray: ...


class LmRunner(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def piece(self, token: int) -> str: ...
    def eos(self) -> int | None: ...
    def sequence_logits(self, ids: list[int]) -> np.ndarray: ...


@dataclass
class Rows:
    """What the gate runs on: texts (heads) or prompts and reference texts (causal LMs)."""

    source: str
    texts: list[str]
    gold: list[Any] | None = None
    run_predictions: list[Any] | None = None
    references: list[str] = field(default_factory=list)


def thresholds_for(key: str, overrides: list[str]) -> dict[str, float]:
    """The defaults of `key` (e.g. "onnx-int8") with `--threshold NAME=VALUE` overrides."""
    chosen = dict(THRESHOLDS[key])
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in LIMITS:
            raise BadInput(f"unknown threshold {name!r}; known: {', '.join(LIMITS)}", key="--threshold")
        try:
            chosen[name] = float(value)
        except ValueError:
            raise BadInput(f"{item!r}: the value must be a number (NAME=VALUE)", key="--threshold") from None
    return chosen


def failures(figures: dict[str, Any], limits: dict[str, float]) -> list[str]:
    """One line per figure outside its threshold (figures that were not measured are skipped)."""
    out = []
    for name, (figure, side) in LIMITS.items():
        value = figures.get(figure)
        if value is None or name not in limits:
            continue
        bad = value < limits[name] if side == "min" else value > limits[name]
        if bad or (isinstance(value, float) and math.isnan(value)):
            out.append(f"{figure} {value:.4g} {'<' if side == 'min' else '>'} {limits[name]:g} ({name})")
    return out


def compare_heads(
    ref: HeadRunner, exp: HeadRunner, rows: Rows, labels: list[str] | None, label_range: Any
) -> dict[str, Any]:
    """Figures of a classification or regression head, export against reference."""
    from llmtune.metrics import classification_metrics, regression_metrics

    a, b = ref.head_logits(rows.texts), exp.head_logits(rows.texts)
    figures: dict[str, Any] = {"rows": len(rows.texts), "source": rows.source}
    if labels is None:  # regression: one output, in the label's units
        from scipy.stats import spearmanr

        from llmtune.models.regression_head import from_unit

        x = [from_unit(float(v), label_range) for v in a[:, 0]]
        y = [from_unit(float(v), label_range) for v in b[:, 0]]
        figures["max_abs_diff"] = float(np.max(np.abs(np.subtract(x, y))))
        figures["spearman"] = float(spearmanr(x, y).statistic) if len(x) > 2 else None
        if rows.gold is not None:
            gold = [float(g) for g in rows.gold]
            figures["metrics"] = {
                "model": _round(regression_metrics(gold, x)),
                "export": _round(regression_metrics(gold, y)),
            }
        return figures
    pa, pb = _softmax(a), _softmax(b)
    la, lb = [labels[i] for i in pa.argmax(1)], [labels[i] for i in pb.argmax(1)]
    figures["label_agreement"] = float(np.mean([p == q for p, q in zip(la, lb)]))
    figures["max_prob_diff"] = float(np.max(np.abs(pa - pb)))
    if rows.run_predictions is not None:
        figures["agreement_with_run_predictions"] = float(
            np.mean([p == q for p, q in zip(lb, rows.run_predictions)])
        )
    if rows.gold is not None:
        gold = [str(g) for g in rows.gold]
        figures["metrics"] = {
            side: _round({k: v for k, v in classification_metrics(gold, pred, labels).items() if k in KEPT})
            for side, pred in (("model", la), ("export", lb))
        }
    return figures


KEPT = ("accuracy", "accuracy_ci95", "precision", "recall", "f1")


def compare_lms(ref: LmRunner, exp: LmRunner, rows: Rows, max_new_tokens: int) -> dict[str, Any]:
    """Figures of a causal LM: greedy continuations of the prompts, log-likelihood of references."""
    agreed = total = identical = 0
    first: int | None = None
    examples = []
    for prompt in rows.texts:
        a, b = _greedy(ref, prompt, max_new_tokens), _greedy(exp, prompt, max_new_tokens)
        split = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        if len(a) == len(b) == split:
            identical += 1
        else:
            first = split if first is None else min(first, split)
        agreed += split
        total += max(len(a), len(b), 1)
        if len(examples) < 3:
            examples.append({"prompt": prompt, "model": "".join(a), "export": "".join(b)})
    lla = [_loglik(ref, t) for t in rows.references]
    llb = [_loglik(exp, t) for t in rows.references]
    return {
        "prompts": len(rows.texts),
        "source": rows.source,
        "max_new_tokens": max_new_tokens,
        "token_agreement": agreed / max(total, 1),
        "identical_continuations": identical / max(len(rows.texts), 1),
        "first_divergence": first,
        "references": len(rows.references),
        "loglik_model": float(np.mean(lla)) if lla else None,
        "loglik_export": float(np.mean(llb)) if llb else None,
        "loglik_diff": float(np.max(np.abs(np.subtract(lla, llb)))) if lla else None,
        "examples": examples,
    }


def _greedy(runner: LmRunner, prompt: str, max_new_tokens: int) -> list[str]:
    ids, out = runner.encode(prompt), []
    for _ in range(max_new_tokens):
        token = int(np.argmax(runner.sequence_logits(ids)[-1]))
        if token == runner.eos():
            break
        ids.append(token)
        out.append(runner.piece(token))
    return out


def _loglik(runner: LmRunner, text: str) -> float:
    """Mean log-probability per token of `text` after its first token."""
    ids = runner.encode(text)
    if len(ids) < 2:
        return 0.0
    logits = runner.sequence_logits(ids)[:-1].astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(np.mean(logp[np.arange(len(ids) - 1), ids[1:]]))


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _round(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        k: round(v, 4) if isinstance(v, float) else v
        for k, v in metrics.items()
        if not isinstance(v, dict | list) or k == "accuracy_ci95"
    }
