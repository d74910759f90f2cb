"""Whether a policy games its reward by saying the same thing to everyone.

A policy can raise its reward by collapsing onto one answer the reward model happens to like
(after GRPO on the shipped loop, 38 of 152 held-out answers were one polite off-topic sentence,
and distinct answers fell from 130 to 59). The mean reward rises; the model got worse. So the
policy stage measures its held-out answers before and after training:

- `distinct_answers`: how many different answers (compared after folding case and spaces);
- `distinct_1` / `distinct_2`: distinct words / word pairs over all words / word pairs (Li et al.,
  2016's distinct-n; 1.0 = nothing repeated);
- `most_repeated` and `most_repeated_share`: the commonest answer and its share of all answers;
- `mean_chars`: the mean answer length;
- the KL to the reference (the starting policy), as TRL logged it at the first and last logged
  steps (before training the policy is the reference: 0).

The rule (`COLLAPSE_RULE`): diversity collapsed when the distinct answers fell below half of what
they were before training, or when one answer makes up at least 20% of all answers and at least
twice its share before. Then eval.json, report.md and the terminal say so.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from statistics import fmean
from typing import Any

DISTINCT_DROP = 0.5
REPEATED_SHARE = 0.2
COLLAPSE_RULE = (
    f"distinct answers after training below {DISTINCT_DROP:.0%} of those before, or one answer at least "
    f"{REPEATED_SHARE:.0%} of all answers and at least twice its share before"
)


def diversity(responses: list[str]) -> dict[str, Any]:
    """The diversity figures of a set of answers (see the module docstring)."""
    folded = [" ".join(text.split()).lower() for text in responses]
    counts = Counter(folded)
    top, top_count = counts.most_common(1)[0] if counts else ("", 0)
    words = [text.split() for text in folded]
    unigrams = [w for ws in words for w in ws]
    bigrams = [pair for ws in words for pair in zip(ws, ws[1:])]
    original = next((r for r, f in zip(responses, folded) if f == top), "")
    return {
        "answers": len(responses),
        "distinct_answers": len(counts),
        "distinct_1": len(set(unigrams)) / len(unigrams) if unigrams else None,
        "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else None,
        "most_repeated": original,
        "most_repeated_count": top_count,
        "most_repeated_share": top_count / len(responses) if responses else None,
        "mean_chars": fmean(len(r) for r in responses) if responses else None,
    }


def collapse(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """The warning when diversity collapsed under COLLAPSE_RULE, else None."""
    reasons = []
    if before["distinct_answers"] and after["distinct_answers"] < DISTINCT_DROP * before["distinct_answers"]:
        reasons.append(
            f"distinct answers fell from {before['distinct_answers']} to {after['distinct_answers']}"
        )
    share, was = after["most_repeated_share"] or 0.0, before["most_repeated_share"] or 0.0
    if share >= REPEATED_SHARE and share >= 2 * was:
        reasons.append(
            f"{after['most_repeated_count']} of {after['answers']} answers ({share:.0%}, before training "
            f"{was:.0%}) are the same: {after['most_repeated'][:80]!r}"
        )
    if not reasons:
        return None
    return (
        "the policy's answers lost their diversity (" + "; ".join(reasons) + "): it may be gaming the reward "
        "rather than answering better; read samples.jsonl before using it, and raise beta or train less "
        f"(rule: {COLLAPSE_RULE})"
    )


def logged_kl(run_dir: Path) -> tuple[float | None, float | None]:
    """The KL to the reference that TRL logged at the first and last logged steps (None when it
    logged none, e.g. with beta 0)."""
    log = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []
    values = [r["kl"] for r in records if isinstance(r.get("kl"), int | float)]
    return (values[0], values[-1]) if values else (None, None)


def diversity_report(before: list[str], after: list[str], run_dir: Path) -> dict[str, Any]:
    """eval.json's `diversity` block: the figures before and after, the KL, the rule and the
    warning (None when diversity held)."""
    first, last = diversity(before), diversity(after)
    kl_first, kl_last = logged_kl(run_dir)
    return {
        "before": first,
        "after": last,
        "kl_to_reference": {"before_training": 0.0, "first_logged": kl_first, "last_logged": kl_last},
        "rule": COLLAPSE_RULE,
        "warning": collapse(first, last),
    }
