"""A judge model: every output scored by a rubric, at temperature 0, parsed strictly.

A reply counts when, stripped, it is a bare number inside the scale ("4"), or when the rubric's
own format (`score_pattern`, default `Score: N`) finds scores in it that all agree and lie inside
the scale. Anything else - no number, a number outside the scale, two different scores, "4/5",
"four" - is unparseable: counted, shown, and left out of the mean; never guessed.

With people's scores of some texts (`data.columns.human_score`, the scored text in `completion`),
the judge scores those texts too and its agreement with the people is reported: Spearman's rank
correlation (scipy), and Cohen's kappa (scikit-learn, unweighted and quadratic-weighted) when the
people's scores are whole numbers of the scale, i.e. categories.

Out of scope: pairwise judging, and so its position bias; one judge, one reply per output.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from llmtune.data.templates import Template
from llmtune.recipes.prompt_eval_checks import Judge

_BARE_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


@dataclass
class Verdict:
    """What the judge said about one output, and the score read from it (None: unparseable)."""

    reply: str
    score: float | None


def parse_score(reply: str, judge: Judge) -> float | None:
    """The score in a judge's reply, or None when it has no single score inside the scale."""
    low, high = judge.scale
    text = reply.strip()
    if _BARE_NUMBER.fullmatch(text):
        found = [text]
    else:
        found = re.findall(judge.score_pattern, reply)
    values = {float(v) for v in found}
    if len(values) != 1:
        return None
    (value,) = values
    return value if low <= value <= high else None


def judge_template(judge: Judge) -> Template:
    """The judge's prompt template, compiled in the sandbox."""
    return Template(judge.template, where="judge.template")


def judge_prompt(template: Template, judge: Judge, row: dict[str, Any], output: str, where: str) -> str:
    """The judge's prompt for one output: the row's fields, the output, its reference, the rubric."""
    low, high = judge.scale
    context = {
        **row,
        "output": output,
        "reference": row.get("label"),
        "rubric": judge.rubric,
        "low": low,
        "high": high,
    }
    return template.render(context, where=where)


def run_judge(engine: Any, judge: Judge, prompts: list[str]) -> list[Verdict]:
    """The judge's reply to each prompt (greedy, so that a rerun gives the same scores), parsed."""
    generations = engine.generate(
        prompts, max_new_tokens=judge.max_new_tokens, temperature=0.0, stop=tuple(judge.stop)
    )
    return [Verdict(g.texts[0], parse_score(g.texts[0], judge)) for g in generations]


def summary(verdicts: list[Verdict]) -> dict[str, Any]:
    """The mean score over parsed replies and how many replies were unparseable."""
    scores = [v.score for v in verdicts if v.score is not None]
    return {
        "judge_score": sum(scores) / len(scores) if scores else None,
        "judge_unparseable": len(verdicts) - len(scores),
        "judge_unparseable_rate": (len(verdicts) - len(scores)) / len(verdicts) if verdicts else 0.0,
    }


def agreement(judge_scores: list[float | None], human: list[Any], scale: list[int]) -> dict[str, Any]:
    """The judge's agreement with people's scores, on the rows where both gave one."""
    paired = [(j, float(h)) for j, h in zip(judge_scores, human) if j is not None and _is_number(h)]
    out: dict[str, Any] = {"rows": len(human), "compared": len(paired), "spearman": None}
    if len(paired) >= 2:
        js, hs = [p[0] for p in paired], [p[1] for p in paired]
        if len(set(js)) > 1 and len(set(hs)) > 1:  # otherwise a rank correlation is undefined
            from scipy.stats import spearmanr

            result = spearmanr(js, hs)
            out["spearman"] = float(result.statistic)
            out["spearman_p"] = float(result.pvalue)
        low, high = scale
        if all(h.is_integer() and low <= h <= high for h in hs) and all(j.is_integer() for j in js):
            from sklearn.metrics import cohen_kappa_score

            categories = list(range(low, high + 1))
            ji, hi = [int(j) for j in js], [int(h) for h in hs]
            out["cohen_kappa"] = _finite(cohen_kappa_score(hi, ji, labels=categories))
            out["cohen_kappa_quadratic"] = _finite(
                cohen_kappa_score(hi, ji, labels=categories, weights="quadratic")
            )
    return out


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
