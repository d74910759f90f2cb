"""The policy stage's diversity check: a collapsed set of answers (one polite off-topic sentence
for a quarter of the prompts, as GRPO once produced on the shipped loop) is flagged under the
stated rule, a diverse one is not, and the report and eval.json say which (no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtune.jobs.rlhf.diversity import COLLAPSE_RULE, collapse, diversity, diversity_report
from llmtune.jobs.rlhf.policy_report import diversity_lines

TOPICS = ["order", "refund", "password", "invoice", "parcel", "account", "card", "plan"]
DIVERSE = [f"your {t} number {i} is on its way, sorry for the wait" for i in range(19) for t in TOPICS]
POLITE = "Thank you so much for your kind question, have a wonderful day!"


def collapsed() -> list[str]:
    """152 answers: 38 the same sentence (spacing and case vary), the rest from 21 others."""
    same = [
        POLITE if i % 2 == 0 else "  thank you so much for your KIND question,  have a wonderful day!"
        for i in range(38)
    ]
    rest = [f"the team answers within {i % 21} days" for i in range(114)]
    return same + rest


def test_the_figures_of_a_set_of_answers() -> None:
    figures = diversity(["a b c", "a  B c", "x y"])
    assert figures["distinct_answers"] == 2 and figures["most_repeated_count"] == 2
    assert figures["most_repeated"] == "a b c" and figures["most_repeated_share"] == pytest.approx(2 / 3)
    assert figures["distinct_1"] == pytest.approx(5 / 8)  # a b c x y of 8 words
    assert figures["distinct_2"] == pytest.approx(3 / 5)  # (a b) (b c) (x y) of 5 pairs
    assert figures["mean_chars"] == pytest.approx((5 + 6 + 3) / 3)


def test_a_collapsed_policy_is_flagged_with_the_rule() -> None:
    before, after = diversity(DIVERSE), diversity(collapsed())
    assert (before["distinct_answers"], after["distinct_answers"]) == (152, 22)
    warning = collapse(before, after)
    assert warning is not None
    assert "distinct answers fell from 152 to 22" in warning
    assert "38 of 152 answers (25%, before training 1%) are the same" in warning and POLITE[:40] in warning
    assert COLLAPSE_RULE in warning


def test_one_repeated_answer_alone_triggers_it_and_a_diverse_policy_is_not_flagged() -> None:
    repeated = [POLITE] * 40 + DIVERSE[:112]  # 113 distinct of 152: not below half, but 26% the same
    assert "40 of 152 answers" in collapse(diversity(DIVERSE), diversity(repeated))
    assert collapse(diversity(DIVERSE), diversity(DIVERSE[::-1])) is None
    already = [POLITE] * 40 + DIVERSE[:112]  # as repeated before as after: training did not do it
    assert collapse(diversity(already), diversity(repeated)) is None


def test_eval_json_and_report_carry_the_figures_the_kl_and_the_verdict(tmp_path: Path) -> None:
    records = [{"step": 1, "kl": 0.0012, "reward": 0.1}, {"step": 2}, {"step": 8, "kl": 0.31, "reward": 0.9}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    block = diversity_report(DIVERSE, collapsed(), tmp_path)
    assert block["kl_to_reference"] == {"before_training": 0.0, "first_logged": 0.0012, "last_logged": 0.31}
    assert block["warning"] and block["rule"] == COLLAPSE_RULE
    json.dumps(block)  # eval.json can hold it
    report = "\n".join(diversity_lines(block))
    assert "| distinct answers | 152 | 22 |" in report
    assert "0.0012 at the first logged step and 0.31 at the last" in report
    assert "**Warning**: the policy's answers lost their diversity" in report
    calm = "\n".join(diversity_lines(diversity_report(DIVERSE, DIVERSE[::-1], tmp_path / "none")))
    assert "Diversity held." in calm and "TRL logged none" in calm and "Warning" not in calm
