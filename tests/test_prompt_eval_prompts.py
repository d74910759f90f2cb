"""prompt-eval's tricky parts, in process: choosing examples, chat turns, answer matching and how
choice scores turn into a prediction."""

from __future__ import annotations

from collections import Counter

import pytest

from llmtune.data.readers import Rows
from llmtune.errors import BadInput
from llmtune.inference.engine import ChoiceScores
from llmtune.jobs.prompt_eval.prompts import ExamplePicker, PromptBuilder, chat_prompt
from llmtune.jobs.prompt_eval.scoring import extract_answer, match_label, pair_metrics, score_prompts
from llmtune.recipes.prompt_eval import PromptEvalRecipe, PromptSpec

LABELS = ["drupe", "pome", "berry"]


def pool(n_per_label: int = 4) -> Rows:
    rows = [
        {"id": f"{label}{i}", "text": f"{label}{i}", "label": label}
        for label in LABELS
        for i in range(n_per_label)
    ]
    return Rows(rows, [f"pool.jsonl:{i + 1}" for i in range(len(rows))])


def picker(selection: str, shots: int, seed: str = "42|few") -> ExamplePicker:
    return ExamplePicker(pool(), shots, selection, seed=seed, labels=LABELS)


def test_balanced_selection_spreads_labels_and_is_seeded() -> None:
    row = {"id": "x", "text": "x", "label": "pome"}
    six = picker("balanced", 6).pick(row, "id:x")
    assert Counter(ex["label"] for ex in six) == {"drupe": 2, "pome": 2, "berry": 2}
    assert picker("balanced", 6).pick(row, "id:x") == six  # same seed, same examples
    draws = {tuple(ex["id"] for ex in picker("balanced", 4).pick(row, f"id:{k}")) for k in range(20)}
    assert len(draws) > 5  # a different draw per row
    four = picker("balanced", 4).pick(row, "id:x")
    assert sorted(Counter(ex["label"] for ex in four).values()) == [1, 1, 2]


@pytest.mark.parametrize("selection", ["first", "random", "balanced"])
def test_the_row_being_scored_is_never_an_example(selection: str) -> None:
    pick = picker(selection, 11)  # all but one of the 12 pool rows
    for row in pool().rows:
        examples = pick.pick(dict(row), f"id:{row['id']}")
        assert len(examples) == 11 and row not in examples
    with pytest.raises(BadInput, match="only 11 pool rows differ"):
        picker(selection, 12).pick(dict(pool().rows[0]), "id:drupe0")


def test_first_selection_takes_the_pool_in_order() -> None:
    examples = picker("first", 3).pick({"id": "drupe1", "text": "drupe1"}, "id:drupe1")
    assert [ex["id"] for ex in examples] == ["drupe0", "drupe2", "drupe3"]


def test_prompt_renders_examples_and_chat_turns() -> None:
    from llmtune.models.scratch import build_tokenizer
    from llmtune.recipes.common import ScratchModel

    spec = PromptSpec(
        template="{{ examples }}Q: {{ text }} ({{ labels | join('/') }})\nA:",
        shots=2,
        example_template="Q: {{ text }}\nA: {{ label }}\n",
        selection="first",
    )
    builder = PromptBuilder("few", spec, pool=pool(), pool_source="pool.jsonl", labels=LABELS, seed=1)
    row = {"id": "t", "text": "plum", "label": "drupe"}
    assert (
        builder.render(row, 0) == "Q: drupe0\nA: drupe\nQ: drupe1\nA: drupe\nQ: plum (drupe/pome/berry)\nA:"
    )

    chat = PromptSpec(
        template="Q: {{ text }}", shots=2, chat=True, system="Name the family.", selection="first"
    )
    turns = PromptBuilder("chat", chat, pool=pool(), pool_source="p", labels=LABELS, seed=1).messages(row, 0)
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert turns[1:3] == [{"role": "user", "content": "Q: drupe0"}, {"role": "assistant", "content": "drupe"}]
    tokenizer = build_tokenizer(ScratchModel(), [])
    with pytest.raises(BadInput, match="has no chat template"):
        chat_prompt(tokenizer, turns, "tiny", "chat")
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    text = chat_prompt(tokenizer, turns, "tiny", "chat")
    assert text.startswith("<system>Name the family.\n<user>Q: drupe0\n<assistant>drupe\n")
    assert text.endswith("<user>Q: plum\n<assistant>")


def test_template_field_missing_from_rows_is_refused() -> None:
    spec = PromptSpec(template="{{ examples }}{{ fruit_name }}:", shots=1)
    builder = PromptBuilder("few", spec, pool=pool(), pool_source="p", labels=LABELS, seed=1)
    with pytest.raises(BadInput, match="template uses fruit_name"):
        builder.check(pool())


@pytest.mark.parametrize(
    ("output", "pattern", "expected"),
    [
        ("  Drupe.\nmore text", None, "drupe"),
        ("\n\n**pome**", None, "pome"),
        ("I think it is a berry", None, None),
        ("I think it is a berry", r"is an? (\w+)", "berry"),
        ("Answer: POME!", r"Answer: *(\w+)", "pome"),
        ("no answer here", r"Answer: (\w+)", None),
    ],
)
def test_generated_answers_are_normalised_then_matched(
    output: str, pattern: str | None, expected: str | None
) -> None:
    assert match_label(extract_answer(output, pattern), LABELS) == expected


class FakeEngine:
    """Stands in for the engine: fixed log-likelihoods, a longer label with a better mean."""

    def score_choices(self, prompts: list[str], choices: list[str]) -> list[ChoiceScores]:
        assert choices == [" short", " much longer"]
        return [ChoiceScores([-2.0, -3.0], [-2.0, -1.0], [1, 3]) for _ in prompts]


@pytest.mark.parametrize(("normalization", "expected"), [("sum", "short"), ("mean", "much longer")])
def test_choice_normalization_picks_by_sum_or_mean(normalization: str, expected: str) -> None:
    recipe = PromptEvalRecipe.model_validate(
        {
            "models": {"m": {"scratch": {}}},
            "data": {"test": "t.jsonl"},
            "prompts": {"p": {"template": "{{ text }}"}},
            "choice_normalization": normalization,
        }
    )
    scored = score_prompts(FakeEngine(), "choices", recipe, ["a:", "b:"], ["short", "much longer"])
    assert [s.prediction for s in scored] == [expected, expected]
    assert scored[0].extra["logprob_sum"] == {"short": -2.0, "much longer": -3.0}


class PerTokenFavoursShort(FakeEngine):
    """Sum and per-token mean favour " short"; per character (lm-eval's acc_norm) the longer label
    wins: -2/5 = -0.4 against -3/11 = -0.27."""

    def score_choices(self, prompts: list[str], choices: list[str]) -> list[ChoiceScores]:
        return [ChoiceScores([-2.0, -3.0], [-1.0, -1.5], [2, 2]) for _ in prompts]


def test_chars_normalization_divides_by_the_label_length_as_lm_eval_acc_norm() -> None:
    recipe = PromptEvalRecipe.model_validate(
        {
            "models": {"m": {"scratch": {}}},
            "data": {"test": "t.jsonl"},
            "prompts": {"p": {"template": "{{ text }}"}},
            "choice_normalization": "chars",
        }
    )
    scored = score_prompts(PerTokenFavoursShort(), "choices", recipe, ["a:"], ["short", "much longer"])
    assert scored[0].prediction == "much longer"
    recipe.choice_normalization = "mean"
    assert (
        score_prompts(PerTokenFavoursShort(), "choices", recipe, ["a:"], ["short", "much longer"])[
            0
        ].prediction
        == "short"
    )


def test_invalid_answers_count_as_wrong_and_get_their_own_column() -> None:
    metrics = pair_metrics(
        ["drupe", "pome", "berry", "pome"], ["drupe", None, "berry", "drupe"], LABELS, "generate"
    )
    assert metrics["accuracy"] == 0.5 and metrics["invalid_rate"] == 0.25
    assert metrics["confusion_matrix"]["labels"][-1] == "(no label)"
    assert metrics["confusion_matrix"]["matrix"][1] == [1, 0, 0, 1]  # gold pome: once drupe, once nothing
