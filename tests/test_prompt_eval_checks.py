"""The pieces behind prompt-eval's generation checks and statistics, each against a reference
implementation or a known answer: assertion types, the judge's parser, Wilson intervals, McNemar's
exact test, the paired bootstrap, and macro precision/recall/F1 against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from llmtune.jobs.prompt_eval.assertions import build_check
from llmtune.jobs.prompt_eval.judge import parse_score
from llmtune.jobs.prompt_eval.measures import classification_measures, macro
from llmtune.jobs.prompt_eval.statistics import (
    Measure,
    interval,
    mcnemar,
    mean_of,
    paired_bootstrap,
    resample_indices,
    share_of,
)
from llmtune.recipes.prompt_eval_checks import Assertion, Judge

CASES = [
    ({"type": "contains", "value": "Paris"}, "It is Paris.", "It is Rome."),
    ({"type": "contains", "value": "paris", "ignore_case": True}, "PARIS", "Rome"),
    ({"type": "not_contains", "value": "As an AI"}, "Sure: 42", "As an AI, I cannot"),
    ({"type": "regex", "value": r"^\d{4}-\d{2}-\d{2}$"}, "2024-05-01", "May 1st"),
    ({"type": "is_json"}, '{"a": [1, 2]}', "{'a': 1}"),
    (
        {"type": "json_schema", "value": {"type": "object", "required": ["name"]}},
        '{"name": "x"}',
        '{"nom": "x"}',
    ),
    ({"type": "json_schema", "value": {"type": "object"}}, "{}", "not json"),
    ({"type": "max_length", "value": 5}, "short", "too long"),
    ({"type": "min_length", "value": 3}, "abc", "ab"),
    ({"type": "one_of", "value": ["yes", "no"]}, " yes\n", "maybe"),
]


@pytest.mark.parametrize(("spec", "passing", "failing"), CASES)
def test_each_assertion_type_passes_and_fails(spec: dict, passing: str, failing: str) -> None:
    check = build_check(Assertion(**spec))
    assert check(passing) is True
    assert check(failing) is False


def test_regex_runs_in_linear_time_on_a_catastrophic_pattern() -> None:
    # (a+)+$ backtracks exponentially in Python's re on this input; RE2 answers at once
    check = build_check(Assertion(type="regex", value="(a+)+$"))
    assert check("a" * 5000 + "!") is False


JUDGE = Judge(model={"scratch": {"architecture": "llama"}}, rubric="r", scale=[1, 5])
REPLIES = [
    ("4", 4.0),
    (" 5\n", 5.0),
    ("3.5", 3.5),
    ("Score: 2", 2.0),
    ("The answer is fine.\nScore: 4", 4.0),
    ("score:3 because ... Score: 3", 3.0),  # the same score twice
    ("Score: 2 or Score: 4", None),  # two scores
    ("6", None),  # outside the scale
    ("Score: 0", None),
    ("four", None),
    ("4/5", None),
    ("I rate it 4", None),  # a number, but neither bare nor in the rubric's format
    ("", None),
]


@pytest.mark.parametrize(("reply", "expected"), REPLIES)
def test_judge_replies_are_parsed_strictly(reply: str, expected: float | None) -> None:
    assert parse_score(reply, JUDGE) == expected


def test_wilson_interval_matches_the_closed_form() -> None:
    k, n, z = 7, 30, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    measure = share_of([True] * k + [False] * (n - k))
    assert interval(measure, 0.95, resample_indices(n, 100, 0)) == pytest.approx(
        [centre - half, centre + half]
    )


def test_mcnemar_exact_matches_the_binomial_on_the_discordant_rows() -> None:
    from scipy.stats import binom

    # 1 row only a is right on, 9 rows only b is right on, 20 rows they agree
    a = np.array([1] * 1 + [0] * 9 + [1] * 10 + [0] * 10)
    b = np.array([0] * 1 + [1] * 9 + [1] * 10 + [0] * 10)
    result = mcnemar(a, b)
    assert (result["only_a"], result["only_b"]) == (1, 9)
    # statsmodels' mcnemar(exact=True): twice the lower tail of Binomial(10, 0.5) at min(b, c)
    assert result["p_value"] == pytest.approx(2 * binom.cdf(1, 10, 0.5))  # 0.0390625
    assert mcnemar(a, a)["p_value"] == 1.0


def test_paired_bootstrap_agrees_with_scipy_and_knows_the_obvious_answers() -> None:
    from scipy.stats import bootstrap

    rng = np.random.default_rng(3)
    a = rng.normal(0.6, 0.2, 60)
    b = a - 0.05 + rng.normal(0, 0.05, 60)
    draws = resample_indices(60, 4000, seed=1)
    ours = paired_bootstrap(mean_of(list(a)), mean_of(list(b)), draws, 0.95)
    theirs = bootstrap(
        (a, b),
        lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
        paired=True,
        n_resamples=4000,
        method="percentile",
        random_state=2,
    ).confidence_interval
    assert ours["difference_interval"] == pytest.approx([theirs.low, theirs.high], abs=0.006)
    assert ours["p_value"] < 0.01
    # the same system twice: no difference; a constant shift on every row: the smallest p there is
    assert paired_bootstrap(mean_of(list(a)), mean_of(list(a)), draws, 0.95)["p_value"] == 1.0
    shifted = paired_bootstrap(mean_of(list(a + 0.01)), mean_of(list(a)), draws, 0.95)
    assert shifted["p_value"] == pytest.approx(1 / 4001)


def test_bootstrap_interval_is_seeded() -> None:
    measure = mean_of([0.1, 0.5, 0.9, 0.3, None])
    first = interval(measure, 0.95, resample_indices(5, 500, seed=42))
    assert first == interval(measure, 0.95, resample_indices(5, 500, seed=42))
    assert first != interval(measure, 0.95, resample_indices(5, 500, seed=43))


def test_macro_scores_equal_scikit_learn_with_invalid_answers() -> None:
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"]
    gold = [labels[i] for i in rng.integers(0, 3, 50)]
    predicted = [None if i == 3 else labels[i] for i in rng.integers(0, 4, 50)]
    measures = classification_measures(gold, predicted, labels, with_invalid=True)
    filled = [p or "(no label)" for p in predicted]
    p, r, f, _ = precision_recall_fscore_support(
        gold, filled, labels=labels, average="macro", zero_division=0
    )
    assert [measures[m].value() for m in ("precision", "recall", "f1")] == pytest.approx([p, r, f])
    assert measures["invalid_rate"].value() == pytest.approx(sum(x is None for x in predicted) / 50)
    assert macro(np.array([[0, 0], [1, 1]]), 2) == (1.0, 1.0, 1.0)
    assert isinstance(measures["accuracy"], Measure) and measures["accuracy"].proportion
