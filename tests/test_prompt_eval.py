"""`llmtune prompt-eval` end to end: the fruit -> family seed example on tiny scratch models, the
choices log-likelihoods against plain transformers, the metrics against scikit-learn, the gate,
and bad input refused with exit 2 before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_bad_input, invoke, run_cli, write, write_jsonl

FAMILIES = {
    "drupe": "peach plum cherry apricot mango olive nectarine date coconut damson greengage sloe jujube",
    "pome": "apple pear quince medlar loquat crabapple serviceberry rowan hawthorn nashi",
    "berry": "grape blueberry cranberry gooseberry currant tomato kiwi banana persimmon elderberry bilberry",
    "citrus": "orange lemon lime grapefruit mandarin tangerine pomelo clementine kumquat yuzu citron satsuma",
}
LLAMA = "{scratch: {architecture: llama, hidden_size: 32, num_layers: 2, num_heads: 2}}"
BERT = "{scratch: {architecture: bert, hidden_size: 32, num_layers: 1, num_heads: 2}}"
PROMPTS = """\
prompts:
  zero_shot: {template: "{{ text }}:"}
  one_shot:
    template: "{{ examples }}{{ text }}:"
    shots: 1
    example_template: "{{ text }}: {{ label }}\\n"
    selection: first
  few_shot:
    template: "{{ examples }}{{ text }}:"
    shots: 4
    example_template: "{{ text }}: {{ label }}\\n"
"""


@pytest.fixture
def fruits(tmp_path: Path) -> Path:
    """train.jsonl / test.jsonl of fruit -> family, every third fruit of a family in test."""
    train, test = [], []
    for family, names in FAMILIES.items():
        for i, fruit in enumerate(names.split()):
            (test if i % 3 == 1 else train).append({"id": f"{fruit}", "fruit": fruit, "family": family})
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "test.jsonl", test)
    return tmp_path


def recipe(folder: Path, body: str, models: str = f"  tiny: {LLAMA}\n") -> Path:
    head = (
        "kind: prompt-eval\nmodels:\n"
        + models
        + "data: {train: train.jsonl, test: test.jsonl, columns: {text: fruit, label: family}}\n"
    )
    return write(folder / "eval.yaml", head + body + "output: {dir: out}\n")


def read_predictions(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture
def tiny_lm(tmp_path: Path) -> Path:
    """A scratch llama saved as a model folder, so the test can reload it with plain transformers."""
    from transformers import set_seed

    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    spec = ScratchModel(architecture="llama", hidden_size=32, num_layers=2, num_heads=2)
    set_seed(7)
    tokenizer = build_tokenizer(spec, [])
    build_scratch_model(spec, tokenizer, head="causal_lm", labels=None).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    return tmp_path / "lm"


@pytest.mark.slow
def test_fruit_families_zero_one_few_shot(fruits: Path, tiny_lm: Path) -> None:
    path = recipe(fruits, PROMPTS, models=f"  tiny: {{path: {tiny_lm}}}\n  encoder: {BERT}\n")
    result = run_cli("prompt-eval", path, "--json", "--fail-under", "accuracy=0.0")
    assert result.code == 0, result.stderr[-3000:]
    run = fruits / "out"
    results = json.loads((run / "results.json").read_text())
    test_rows = (fruits / "test.jsonl").read_text().splitlines()
    assert [(p["model"], p["prompt"]) for p in results["pairs"]] == [
        (m, p) for m in ("tiny", "encoder") for p in ("zero_shot", "one_shot", "few_shot")
    ]
    assert [p["scoring"] for p in results["pairs"]] == ["choices"] * 3 + ["classifier-head"] * 3
    predictions = read_predictions(run)
    assert len(predictions) == 6 * len(test_rows)
    check_metrics_against_sklearn(results["pairs"], predictions, len(test_rows))
    by_prompt = {p["prompt"]: p for p in predictions if p["model"] == "tiny"}
    assert by_prompt["zero_shot"]["prompt_text"] == f"{by_prompt['zero_shot']['id']}:"
    few = [p for p in predictions if p["prompt"] == "few_shot" and p["model"] == "tiny"]
    for row in few:  # four examples, one of each family (balanced), never the row being scored
        shots = row["prompt_text"].splitlines()[:-1]
        assert len(shots) == 4 and sorted(s.split(": ")[1] for s in shots) == sorted(FAMILIES)
        assert row["id"] not in [s.split(": ")[0] for s in shots]
    check_log_likelihoods(tiny_lm, [p for p in predictions if p["model"] == "tiny"][::7])
    summary = result.json()
    assert summary["gate"]["passed"] and summary["best"]["accuracy"] == max(
        p["metrics"]["accuracy"] for p in results["pairs"]
    )
    report = (run / "report.md").read_text()
    assert "| few_shot (4-shot) |" in report and "### encoder x one_shot" in report
    assert "](chart.png)" in report and (run / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"


def check_metrics_against_sklearn(pairs: list[dict], predictions: list[dict], n: int) -> None:
    """Every pair scored the same n rows, and its metrics are scikit-learn's on predictions.jsonl."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = sorted(FAMILIES)
    for pair in pairs:
        rows = [p for p in predictions if (p["model"], p["prompt"]) == (pair["model"], pair["prompt"])]
        assert pair["n"] == len(rows) == n
        gold, pred = [r["gold"] for r in rows], [r["prediction"] for r in rows]
        p, r, f, _ = precision_recall_fscore_support(
            gold, pred, labels=labels, average="macro", zero_division=0
        )
        m = pair["metrics"]
        assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred))
        assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))
        assert sum(map(sum, m["confusion_matrix"]["matrix"])) == n
        for row in rows:
            assert set(row["scores"]) == set(labels)
            assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-4)
            assert row["prediction"] == max(row["scores"], key=row["scores"].get)


def check_log_likelihoods(model_dir: Path, rows: list[dict]) -> None:
    """Recompute log p(" label" | prompt) with plain transformers, summed and per token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    for row in rows:
        context = tok(row["prompt_text"])["input_ids"]
        for label in FAMILIES:
            ids = tok(row["prompt_text"] + " " + label)["input_ids"]
            assert ids[: len(context)] == context
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
            target = ids[len(context) :]
            expected = sum(float(logprobs[len(context) - 1 + k, t]) for k, t in enumerate(target))
            assert row["logprob_sum"][label] == pytest.approx(expected, abs=1e-3)
            assert row["logprob_mean"][label] == pytest.approx(expected / len(target), abs=1e-3)
        # choice_normalization: sum (the default) predicts by the summed log-likelihood
        assert row["prediction"] == max(row["logprob_sum"], key=row["logprob_sum"].get)


@pytest.mark.slow
def test_generate_scoring_counts_invalid_answers_and_gate_fails(fruits: Path) -> None:
    body = PROMPTS.split("  one_shot:")[0] + "scoring: generate\nmax_new_tokens: 4\nfail_when: any\n"
    result = run_cli("prompt-eval", recipe(fruits, body), "--fail-under", "accuracy=0.99", "--json")
    assert result.code == 1, result.stderr[-3000:]
    assert "accuracy of pair tiny x zero_shot is" in result.stderr and "below 0.99" in result.stderr
    rows = read_predictions(fruits / "out")
    pair = json.loads((fruits / "out" / "results.json").read_text())["pairs"][0]
    invalid = [r for r in rows if r["prediction"] is None]
    assert pair["metrics"]["invalid_rate"] == pytest.approx(len(invalid) / len(rows))
    assert pair["metrics"]["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    assert all(isinstance(r["output"], str) for r in rows)
    assert result.json()["gate"]["passed"] is False


@pytest.mark.slow
def test_free_text_answers_get_exact_match_and_contains(fruits: Path) -> None:
    body = PROMPTS.split("  one_shot:")[0] + "task: free_text\nscoring: generate\nmax_new_tokens: 3\n"
    result = run_cli("prompt-eval", recipe(fruits, body), "--json")
    assert result.code == 0, result.stderr[-3000:]
    rows = read_predictions(fruits / "out")
    metrics = json.loads((fruits / "out" / "results.json").read_text())["pairs"][0]["metrics"]
    assert set(metrics) == {"exact_match", "contains", "chrf", "bleu", "rouge_l", "n"}
    assert metrics["exact_match"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    contains = [r["gold"] in (r["prediction"] or "") for r in rows]  # predictions are normalised
    assert metrics["contains"] == pytest.approx(sum(contains) / len(rows))


def test_shots_without_examples_slot_is_refused(fruits: Path) -> None:
    body = PROMPTS.replace(
        'template: "{{ examples }}{{ text }}:"\n    shots: 4', 'template: "{{ text }}:"\n    shots: 4'
    )
    result = invoke("prompt-eval", recipe(fruits, body))
    assert_bad_input(result, "eval.yaml:", "prompts.few_shot", "{{ examples }}")
    assert not (fruits / "out").exists()


def test_more_shots_than_the_pool_is_refused(fruits: Path) -> None:
    pool = len((fruits / "train.jsonl").read_text().splitlines())
    result = run_cli("prompt-eval", recipe(fruits, PROMPTS), "--set", f"prompts.few_shot.shots={pool + 1}")
    assert_bad_input(
        result, "eval.yaml", "prompts.few_shot.shots", f"{pool + 1} shots", f"has only {pool} rows"
    )
    assert not (fruits / "out").exists()


def test_labels_missing_from_the_data_are_refused(fruits: Path) -> None:
    result = invoke("prompt-eval", recipe(fruits, PROMPTS + "labels: [drupe, pome, citrus]\n"))
    assert_bad_input(result, "train.jsonl:", "label 'berry' is not in labels")
    assert not (fruits / "out").exists()
    write_jsonl(fruits / "test.jsonl", [{"id": "x", "fruit": "fig"}])
    assert_bad_input(
        invoke("prompt-eval", recipe(fruits, PROMPTS)), "test.jsonl:1", "'family' (mapped to label)"
    )


def test_chat_prompt_needs_a_chat_template_and_gate_a_known_metric(fruits: Path) -> None:
    path = recipe(fruits, PROMPTS)
    result = invoke("prompt-eval", path, "--set", "prompts.one_shot.chat=true")
    assert_bad_input(result, "prompts.one_shot.chat", "has no chat template")
    assert_bad_input(invoke("prompt-eval", path, "--fail-under", "bleu=0.3"), "--fail-under", "'bleu'")
    assert not (fruits / "out").exists()


def test_example_pool_labels_are_all_reported_with_the_near_label(fruits: Path) -> None:
    write_jsonl(
        fruits / "pool.jsonl",
        [
            {"fruit": "apple", "family": "pome"},
            {"fruit": "pear", "family": "Pome"},
            {"fruit": "lime", "family": "citrus"},
            {"fruit": "fig", "family": "syconium"},
        ],
    )
    body = (
        'prompts:\n  few:\n    template: "{{ examples }}{{ text }}:"\n    shots: 2\n'
        '    examples_from: pool.jsonl\n    example_template: "{{ text }}: {{ label }}\\n"\n'
        "labels: [drupe, pome, berry, citrus]\n"
    )
    result = invoke("prompt-eval", recipe(fruits, body))
    assert_bad_input(result, "pool.jsonl:2", "'Pome'", "did you mean 'pome'", "pool.jsonl:4", "'syconium'")
    assert "pool.jsonl:3" not in result.stderr
    assert not (fruits / "out").exists()
