"""`llmtune rlhf` stages dpo and kto, run as a user runs them: tiny scratch llamas, a few dozen
preference rows in tmp_path. Held-out chosen answers share a pattern the rejected ones lack
(" ye..." against " na..." / " ba..."), so a policy that learned the preference shows it."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean

import pytest
from conftest import assert_bad_input, invoke, read_jsonl, run_cli, write, write_jsonl

TRAIN_WORDS = ["cat", "dog", "sun", "red", "blue", "tree", "fish", "bird", "moon", "star", "rock", "leaf"]
TEST_WORDS = ["lake", "wind", "snow", "sand"]
SCRATCH = "{scratch: {architecture: llama, hidden_size: 32, num_layers: 2, num_heads: 2}}"


def ranking_row(word: str, ranking: str = "A = C > B = D") -> dict:
    """Two good answers tied above two bad ones tied: 4 pairs and 2 tied pairs."""
    responses = [f" yes {word}", f" nah {word}", f" yep {word}", f" bah {word}"]
    return {"prompt": f"Q: {word}\nA:", "responses": responses, "ranking": ranking}


def pair_row(word: str) -> dict:
    return {"prompt": f"Q: {word}\nA:", "chosen": f" yes {word}", "rejected": f" nah {word}"}


def label_rows(word: str, bad: int = 1) -> list[dict]:
    good = [{"prompt": f"Q: {word}\nA:", "completion": f" yes {word}", "label": True}]
    return good + [
        {"prompt": f"Q: {word}\nA:", "completion": f" n{'ah'[: i + 1]} {word}", "label": False}
        for i in range(bad)
    ]


def recipe(tmp_path: Path, stage: str, *, method: str = "lora", training: str = "", extra: str = "") -> Path:
    settings = {"max_steps": "10", "batch_size": "8", "learning_rate": "1.0e-2", "logging_steps": "1"}
    for item in filter(None, (t.strip() for t in training.split(","))):
        key, value = item.split(":")
        settings[key.strip()] = value.strip()
    training_yaml = ", ".join(f"{k}: {v}" for k, v in settings.items())
    return write(
        tmp_path / f"{stage}.yaml",
        f"""kind: rlhf
stage: {stage}
model: {SCRATCH}
method: {{type: {method}, r: 4}}
data: {{train: train.jsonl, test: test.jsonl, max_length: 48}}
beta: 0.1
training: {{{training_yaml}}}
output: {{dir: run}}
{extra}""",
    )


def run_ok(tmp_path: Path, path: Path, *args: str) -> dict:
    result = run_cli("rlhf", path, "--json", *args, cwd=tmp_path)
    assert result.code == 0, result.stderr[-3000:]
    return result.json()


def completion_logp(model, tokenizer, prompt: str, completion: str) -> float:
    """Summed log-prob of completion + eos after prompt, recomputed here with plain torch."""
    import torch

    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids)) if a != b), len(prompt_ids))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logps = torch.log_softmax(logits, dim=-1)
    return float(sum(logps[i - 1, ids[i]] for i in range(start, len(ids))))


@pytest.mark.slow
def test_dpo_on_rankings_with_ties_learns_the_preference_and_saves_a_loadable_adapter(tmp_path: Path) -> None:
    unranked = {**ranking_row("zero"), "ranking": ""}
    write_jsonl(tmp_path / "train.jsonl", [ranking_row(w) for w in TRAIN_WORDS] + [unranked])
    write_jsonl(tmp_path / "test.jsonl", [ranking_row(w) for w in TEST_WORDS])
    summary = run_ok(tmp_path, recipe(tmp_path, "dpo"))

    n = len(TRAIN_WORDS)
    assert (summary["pairs"], summary["tied_pairs"], summary["rankings"]) == (4 * n, 2 * n, n)
    assert summary["unranked_rows"] == 1 and summary["test_pairs"] == 4 * len(TEST_WORDS)
    assert summary["steps"] == 10
    before, after = summary["test_before"], summary["test"]
    assert before["preference_accuracy"] == 0.5  # the policy is its reference before training
    assert after["chosen_preferred"] > before["chosen_preferred"]
    assert after["chosen_preferred"] == 1.0 and after["preference_accuracy"] == 1.0
    assert after["logp_margin"] > before["logp_margin"]

    run = tmp_path / "run"
    evaluation = json.loads((run / "eval.json").read_text())
    for key in ("chosen_preferred", "preference_accuracy"):
        assert evaluation[f"{key}_before"] == before[key] and evaluation[f"{key}_after"] == after[key]
    report = (run / "report.md").read_text()
    assert f"{2 * n} tied pairs (responses ranked equal): never a preference" in report
    assert "1 rows not ranked yet" in report

    # model/ is a plain peft adapter (its scratch base beside it); the held-out chosen answers'
    # mean log-prob under it is what evaluate reported
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    assert list(model.peft_config) == ["default"]  # TRL's frozen reference copy is not saved
    chosen = [(r["prompt"], r["responses"][i]) for r in map(ranking_row, TEST_WORDS) for i in (0, 0, 2, 2)]
    mine = fmean(completion_logp(model, tokenizer, p, c) for p, c in chosen)
    assert mine == pytest.approx(evaluation["metrics"]["logp_chosen"], abs=1e-3)


@pytest.mark.slow
def test_dpo_full_fine_tune_on_pairs_saves_a_plain_model(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [pair_row(w) for w in TRAIN_WORDS])
    write_jsonl(tmp_path / "test.jsonl", [pair_row(w) for w in TEST_WORDS])
    summary = run_ok(
        tmp_path, recipe(tmp_path, "dpo", method="full", training="max_steps: 4, learning_rate: 1.0e-3")
    )
    assert (summary["pairs"], summary["pair_rows"], summary["tied_pairs"]) == (
        len(TRAIN_WORDS),
        len(TRAIN_WORDS),
        0,
    )
    assert "a copy of the model" in summary["reference"]
    assert summary["test_before"]["preference_accuracy"] == 0.5
    assert summary["test"]["reward_margin"] != 0.0  # the policy moved away from its reference

    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    model = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    rows = [pair_row(w) for w in TEST_WORDS]
    chosen = fmean(completion_logp(model, tokenizer, r["prompt"], r["chosen"]) for r in rows)
    rejected = fmean(completion_logp(model, tokenizer, r["prompt"], r["rejected"]) for r in rows)
    metrics = json.loads((run / "eval.json").read_text())["metrics"]
    assert chosen == pytest.approx(metrics["logp_chosen"], abs=1e-3)
    assert rejected == pytest.approx(metrics["logp_rejected"], abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("rows", ["labels", "rankings"])
def test_kto_on_label_rows_and_on_rankings(tmp_path: Path, rows: str) -> None:
    if rows == "labels":  # two bad answers for each good one: TRL's weights rebalance them
        write_jsonl(tmp_path / "train.jsonl", [r for w in TRAIN_WORDS for r in label_rows(w, bad=2)])
        write_jsonl(tmp_path / "test.jsonl", [r for w in TEST_WORDS for r in label_rows(w)])
        good, bad, test_pairs = len(TRAIN_WORDS), 2 * len(TRAIN_WORDS), len(TEST_WORDS)
        weights = (2.0, 1.0)
    else:  # the best tier is good, the worst bad: balanced
        write_jsonl(tmp_path / "train.jsonl", [ranking_row(w) for w in TRAIN_WORDS])
        write_jsonl(tmp_path / "test.jsonl", [ranking_row(w) for w in TEST_WORDS])
        good, bad, test_pairs = 2 * len(TRAIN_WORDS), 2 * len(TRAIN_WORDS), 4 * len(TEST_WORDS)
        weights = (1.0, 1.0)
    summary = run_ok(tmp_path, recipe(tmp_path, "kto", training="max_steps: 4"))
    assert (summary["good"], summary["bad"], summary["test_pairs"]) == (good, bad, test_pairs)
    assert (summary["desirable_weight"], summary["undesirable_weight"]) == weights
    for metrics in (summary["test_before"], summary["test"]):
        assert {"chosen_preferred", "preference_accuracy", "logp_good_minus_bad"} <= set(metrics)
    assert summary["test_before"]["preference_accuracy"] == 0.5
    assert summary["test"]["logp_good_minus_bad"] > summary["test_before"]["logp_good_minus_bad"]
    assert (tmp_path / "run" / "model" / "adapter_config.json").exists()


def test_kto_refuses_batches_of_one_and_data_without_bad_rows(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [r for w in TRAIN_WORDS for r in label_rows(w)])
    write_jsonl(tmp_path / "test.jsonl", [r for w in TEST_WORDS for r in label_rows(w)])
    result = invoke("rlhf", recipe(tmp_path, "kto", training="batch_size: 1"), cwd=tmp_path)
    assert_bad_input(result, "training.batch_size", "2 or more")

    write_jsonl(tmp_path / "train.jsonl", [label_rows(w)[0] for w in TRAIN_WORDS])
    result = invoke("rlhf", recipe(tmp_path, "kto"), cwd=tmp_path)
    assert_bad_input(result, "data.train", "good and bad")
    assert not (tmp_path / "run").exists()


def reward_model(folder: Path) -> Path:
    """A tiny one-output scratch bert with a byte tokenizer: a reward model for the test."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    from llmtune.models.scratch import build_tokenizer
    from llmtune.recipes.common import ScratchModel

    tokenizer = build_tokenizer(ScratchModel(architecture="bert"), [])
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_reward_model_gives_the_mean_reward_before_and_after_with_its_samples(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [pair_row(w) for w in TRAIN_WORDS])
    write_jsonl(tmp_path / "test.jsonl", [pair_row(w) for w in TEST_WORDS])
    reward_model(tmp_path / "rm")
    extra = "reward_model: {path: rm}\ngeneration: {num_generations: 2, max_new_tokens: 4}\n"
    summary = run_ok(tmp_path, recipe(tmp_path, "dpo", training="max_steps: 3", extra=extra))

    run = tmp_path / "run"
    evaluation = json.loads((run / "eval.json").read_text())
    samples = read_jsonl(run / "samples.jsonl")
    for phase in ("before", "after"):
        mine = [s for s in samples if s["phase"] == phase]
        assert len(mine) == 2 * len(TEST_WORDS)
        assert {s["prompt"] for s in mine} == {f"Q: {w}\nA:" for w in TEST_WORDS}
        assert fmean(s["reward"] for s in mine) == pytest.approx(evaluation[f"mean_reward_{phase}"], abs=1e-6)
    assert summary["test"]["mean_reward"] == pytest.approx(evaluation["mean_reward_after"], abs=1e-4)
    assert "Sampled answers to held-out prompts" in (run / "report.md").read_text()


def test_bad_rankings_missing_test_split_and_dry_run(tmp_path: Path) -> None:
    rows = [ranking_row(w) for w in TRAIN_WORDS]
    rows[2] = ranking_row("oops", ranking="A > B > Q")
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", [ranking_row(w) for w in TEST_WORDS])
    path = recipe(tmp_path, "dpo")
    assert_bad_input(invoke("rlhf", path, cwd=tmp_path), "train.jsonl:3", "'A > B > Q'")

    rows[2] = ranking_row("oops")
    write_jsonl(tmp_path / "train.jsonl", rows)
    no_test = write(tmp_path / "no_test.yaml", path.read_text().replace(", test: test.jsonl", ""))
    assert_bad_input(invoke("rlhf", no_test, cwd=tmp_path), "data.test")

    result = run_cli("rlhf", path, "--dry-run", "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr[-2000:]
    plan = result.json()
    assert plan["dry_run"] and (plan["pairs"], plan["tied_pairs"]) == (
        4 * len(TRAIN_WORDS),
        2 * len(TRAIN_WORDS),
    )
    assert plan["beta"] == 0.1 and plan["method"] == "lora" and plan["trainable_params"] > 0
    assert not (tmp_path / "run").exists()
