"""Reference metrics of generated text against the gold answer, through the libraries people cite.

- exact_match / contains: prompt-eval's normalisation (first line, stripped, lower case, without
  trailing punctuation), as for classification by generation;
- chrF and BLEU: sacrebleu with its defaults (BLEU: 13a tokenisation, exp smoothing; chrF: n=6,
  beta=2), per row (`sentence_score`) and per pair as the corpus score; both divided by 100 so
  every metric in a table is on 0-1;
- ROUGE-L: rouge-score's F-measure (its default tokeniser: lower case, a-z and 0-9 only, so it
  suits English), per row and its mean per pair.

The corpus scores are computed from sacrebleu's per-row sufficient statistics (the sum over the
rows, then its own formula), so that any subset of rows - a slice, a bootstrap resample - is
scored exactly as sacrebleu would score those rows alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from llmtune.jobs.prompt_eval.scoring import normalise


def hypothesis(output: str, pattern: str | None) -> str:
    """The text compared with the reference: `pattern`'s first group (or match) in the output when
    the recipe has an answer_pattern, else the whole output, stripped."""
    import re

    if pattern is not None:
        found = re.search(pattern, output)
        if found is None:
            return ""
        output = found.group(1) if found.groups() else found.group(0)
    return output.strip()


def require_scorers() -> None:
    """BadInput (exit 2, before anything is written) when sacrebleu or rouge-score is missing."""
    from llmtune.errors import BadInput
    from llmtune.recipes.prompt_eval_checks import require

    for module, package in (("sacrebleu", "sacrebleu"), ("rouge_score", "rouge-score")):
        try:
            require(module, package)
        except ValueError as exc:
            raise BadInput(f"task free_text {exc}", key="task") from None


def corpus_metric(name: str) -> Any:
    """sacrebleu's metric object for chrf or bleu, with its default settings."""
    from sacrebleu.metrics import BLEU, CHRF

    return BLEU() if name == "bleu" else CHRF()


def signatures() -> dict[str, str]:
    """sacrebleu's signature of each corpus metric as configured here (one reference per row)."""
    out = {}
    for name in ("chrf", "bleu"):
        metric = corpus_metric(name)
        metric.corpus_score(["a"], [["a"]])  # the signature knows the reference count once used
        out[name] = metric.get_signature().format()
    import importlib.metadata

    out["rouge_l"] = f"rouge-score {importlib.metadata.version('rouge-score')}|rougeL|fmeasure|stemmer:no"
    return out


@dataclass
class ReferenceScores:
    """Every reference metric of one pair, per row, and the sufficient statistics behind chrF/BLEU."""

    rows: list[dict[str, float]]
    stats: dict[str, np.ndarray]  # chrf / bleu: one row of sacrebleu statistics per scored row

    def corpus(self, name: str, indices: np.ndarray | None = None) -> float | None:
        """sacrebleu's corpus chrF or BLEU (/ 100) of the rows at `indices` (all rows: None)."""
        stats = self.stats[name] if indices is None else self.stats[name][indices]
        if len(stats) == 0:
            return None
        return corpus_from_stats(name, stats)


def corpus_from_stats(name: str, stats: np.ndarray) -> float:
    """sacrebleu's corpus score (/ 100) from per-row statistics."""
    metric = _metric_cache(name)
    return float(metric._compute_score_from_stats(stats.sum(axis=0).tolist()).score) / 100


_CACHE: dict[str, Any] = {}


def _metric_cache(name: str) -> Any:
    if name not in _CACHE:
        _CACHE[name] = corpus_metric(name)
    return _CACHE[name]


def reference_scores(hypotheses: list[str], references: list[str]) -> ReferenceScores:
    """Per-row exact_match, contains, chrf, bleu and rouge_l (0-1) of each hypothesis against its
    reference, and the per-row sacrebleu statistics of chrf and bleu."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    stats = {
        name: np.asarray(
            _metric_cache(name)._extract_corpus_statistics(hypotheses, [references]), dtype=np.int64
        )
        for name in ("chrf", "bleu")
    }
    rows = []
    for i, (hyp, ref) in enumerate(zip(hypotheses, references, strict=True)):
        gold, said = normalise(ref), normalise(hyp)
        rows.append(
            {
                "exact_match": float(gold == said),
                "contains": float(bool(gold) and gold in said),
                "chrf": corpus_from_stats("chrf", stats["chrf"][i : i + 1]),
                "bleu": _sentence_bleu(hyp, ref),
                "rouge_l": float(scorer.score(ref, hyp)["rougeL"].fmeasure),
            }
        )
    return ReferenceScores(rows, stats)


def _sentence_bleu(hyp: str, ref: str) -> float:
    """sacrebleu's sentence BLEU (effective order, as sacrebleu.sentence_bleu) / 100: a row's own
    BLEU for the predictions file; the pair's BLEU is the corpus score, not the mean of these."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(hyp, [ref]).score) / 100
