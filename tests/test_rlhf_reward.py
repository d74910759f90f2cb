"""`llmtune rlhf` stage reward: rankings (with ties) become pairs, a tiny reward model learns a
toy preference, eval.json's pairwise accuracy matches the saved model reloaded with plain
transformers + peft, a LoRA reward model keeps its score head, and bad data is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_bad_input, invoke, read_jsonl, run_cli, start_cli, write, write_jsonl

TOPICS = ["order", "refund", "password", "invoice", "parcel", "account", "card", "plan", "box", "email"]
LETTERS = "ABCD"


def ranking_rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Four responses per prompt: two polite ones (please / thanks) tied at the top, then a curt
    one, then a rude one: 5 strict pairs and 1 tied pair per row. Letters are shuffled by row."""
    rows = []
    for i in range(start, start + n):
        topic = TOPICS[i % len(TOPICS)]
        kinds = {
            "polite": f" please see your {topic} page, thanks",
            "grateful": f" thanks, your {topic} is fixed, please wait",
            "curt": f" no idea about the {topic}",
            "rude": f" the {topic} is not my job",
        }
        order = list(kinds)[i % 4 :] + list(kinds)[: i % 4]  # where each kind is lettered
        letter = {kind: LETTERS[order.index(kind)] for kind in kinds}
        rows.append(
            {
                "id": f"r{i}",
                "prompt": f"Question: my {topic}?\nAnswer:",
                "responses": [kinds[k] for k in order],
                "ranking": f"{letter['polite']} = {letter['grateful']} > {letter['curt']} > {letter['rude']}",
            }
        )
    return rows


def reward_recipe(
    folder: Path,
    *,
    architecture: str = "bert",
    method: str = "lora",
    training: str = "max_steps: 4, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1",
    extra: str = "",
    data: str = "train: train.jsonl, test: test.jsonl",
) -> Path:
    if not (folder / "train.jsonl").exists():
        write_jsonl(folder / "train.jsonl", ranking_rows(16))
        write_jsonl(folder / "test.jsonl", ranking_rows(6, start=100))
    return write(
        folder / f"reward-{architecture}-{method}.yaml",
        f"""kind: rlhf
stage: reward
seed: 7
model: {{scratch: {{architecture: {architecture}, hidden_size: 32, num_layers: 2, num_heads: 2}}}}
method: {{type: {method}, r: 4}}
data: {{{data}, max_length: 64}}
training: {{{training}}}
output: {{dir: run}}
{extra}""",
    )


def plain_scores(model_dir: Path, texts: list[str]) -> list[float]:
    """The saved reward model's score of each text, loaded with plain transformers (+ peft for an
    adapter folder): no llmtune code involved."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if (model_dir / "adapter_config.json").exists():
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(model_dir)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    model.eval()
    out = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=64, return_tensors="pt")
            logits = model(**enc).logits
            assert logits.shape == (1, 1), "a reward model has one output"
            out.append(float(logits[0, 0]))
    return out


def accuracy_of(chosen: list[float], rejected: list[float]) -> float:
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)]
    return sum(wins) / len(wins)


@pytest.mark.slow
def test_rankings_with_ties_train_a_reward_model_that_learns_the_preference(tmp_path: Path) -> None:
    path = reward_recipe(
        tmp_path,
        method="full",
        training="epochs: 4, batch_size: 8, learning_rate: 2.0e-3, logging_steps: 1",
    )
    result = run_cli("rlhf", path, "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    # 4 responses, one tie: 5 strict pairs and 1 tied pair per ranked row
    assert summary["rankings"] == {"train": 16, "test": 6}
    assert summary["pairs"] == {"train": 80, "test": 30}
    assert summary["tied_pairs"] == {"train": 16, "test": 6}
    assert summary["unranked"] == {"train": 0, "test": 0}

    evaluation = json.loads((tmp_path / "run" / "eval.json").read_text())
    before, after = evaluation["pairwise_accuracy_before"], evaluation["pairwise_accuracy"]
    assert after >= 0.9 and after > before + 0.2, (before, after)
    assert summary["test"]["pairwise_accuracy"] == round(after, 4)
    assert list(summary["test"])[0] == "pairwise_accuracy"
    assert evaluation["metrics"]["n"] == 30 and evaluation["metrics"]["tied_pairs"] == 6

    # the independent check: model/ reloaded with plain transformers scores the test pairs to the
    # same accuracy; predictions.jsonl holds the same scores
    pairs = [r for r in read_jsonl(tmp_path / "run" / "predictions.jsonl") if "chosen" in r]
    assert len(pairs) == 30
    chosen = plain_scores(tmp_path / "run" / "model", [p["prompt"] + p["chosen"] for p in pairs])
    rejected = plain_scores(tmp_path / "run" / "model", [p["prompt"] + p["rejected"] for p in pairs])
    assert accuracy_of(chosen, rejected) == pytest.approx(after)
    assert chosen == pytest.approx([p["reward_chosen"] for p in pairs], abs=1e-4)

    report = (tmp_path / "run" / "report.md").read_text()
    assert "16 tied pairs in train left out" in report and "tie gap" in report
    assert "## Sample held-out pairs" in report


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["bert", "llama"])
def test_a_lora_reward_model_saves_its_score_head(tmp_path: Path, architecture: str) -> None:
    """Reloaded with plain transformers + peft, model/ gives the scores llmtune measured: the
    trained head (bert's `classifier`, llama's `score`) is in the adapter, not a fresh one."""
    from safetensors import safe_open

    path = reward_recipe(tmp_path, architecture=architecture)
    result = run_cli("rlhf", path, cwd=tmp_path)
    assert result.code == 0, result.stderr[-3000:]
    model_dir = tmp_path / "run" / "model"
    head = "classifier" if architecture == "bert" else "score"
    with safe_open(str(model_dir / "adapter_model.safetensors"), "pt") as weights:
        assert any(f".{head}." in key for key in weights.keys()), list(weights.keys())
    pairs = [r for r in read_jsonl(tmp_path / "run" / "predictions.jsonl") if "chosen" in r]
    measured = [p["reward_chosen"] for p in pairs[:6]]
    assert plain_scores(model_dir, [p["prompt"] + p["chosen"] for p in pairs[:6]]) == pytest.approx(
        measured, abs=1e-4
    )
    # and llmtune's own scorer (the policy stage's reward_model: {path: RUN/model}) agrees
    from llmtune.jobs.rlhf.scoring import RewardScorer
    from llmtune.recipes import load_recipe
    from llmtune.recipes.common import ModelRef

    recipe = load_recipe(path)
    scorer = RewardScorer.load(ModelRef(path=str(model_dir)), recipe)
    scores = scorer.score([p["prompt"] for p in pairs[:6]], [p["chosen"] for p in pairs[:6]])
    assert scores == pytest.approx(measured, abs=1e-4)


@pytest.mark.slow
def test_margin_rank_distance_gives_each_pair_its_tiers_and_changes_the_loss(tmp_path: Path) -> None:
    from llmtune.jobs.rlhf.reward import PairText, preference_columns

    pairs = [PairText("Q:", " best", " worst", 3, "f:1"), PairText("Q:", " good", " ok", 1, "f:1")]
    assert preference_columns(pairs, "rank_distance") == {
        "chosen": ["Q: best", "Q: good"],
        "rejected": ["Q: worst", "Q: ok"],
        "margin": [3.0, 1.0],
    }
    assert "margin" not in preference_columns(pairs, "none")

    training = "max_steps: 1, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1"
    losses = {}
    for margin in ("none", "rank_distance"):
        path = reward_recipe(tmp_path, training=training, extra=f"margin: {margin}\n")
        result = run_cli("rlhf", path, "--json", "--output", tmp_path / margin, cwd=tmp_path)
        assert result.code == 0, result.stderr[-3000:]
        assert result.json()["margin"] == margin
        losses[margin] = result.json()["train_loss"]
    # same seed, same first batch: only the margin differs, and it pushes the loss up
    assert losses["rank_distance"] > losses["none"] + 0.5, losses


def test_malformed_ranking_is_refused_with_file_and_line(tmp_path: Path) -> None:
    rows = ranking_rows(4)
    rows[2]["ranking"] = "A > B > A > C"
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", ranking_rows(2, start=50))
    path = reward_recipe(tmp_path)
    result = invoke("rlhf", path, cwd=tmp_path)
    assert_bad_input(result, "train.jsonl:3", "A appears twice")
    assert not (tmp_path / "run").exists()


def test_only_unranked_rows_are_refused(tmp_path: Path) -> None:
    rows = ranking_rows(4)
    for row in rows:
        row["ranking"] = ""
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", ranking_rows(2, start=50))
    result = invoke("rlhf", reward_recipe(tmp_path), cwd=tmp_path)
    assert_bad_input(result, "data.train", "4 not ranked yet", "rank the rows first")
    assert not (tmp_path / "run").exists()


def test_no_held_out_pairs_is_refused(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", ranking_rows(4))
    write_jsonl(tmp_path / "test.jsonl", ranking_rows(2, start=50))
    result = invoke("rlhf", reward_recipe(tmp_path, data="train: train.jsonl"), cwd=tmp_path)
    assert_bad_input(result, "data.test", "data.split.test")
    assert not (tmp_path / "run").exists()

    unranked = ranking_rows(2, start=50)
    for row in unranked:
        row["ranking"] = " "
    write_jsonl(tmp_path / "test.jsonl", unranked)
    result = invoke("rlhf", reward_recipe(tmp_path), cwd=tmp_path)
    assert_bad_input(result, "no preference pairs in data.test")
    assert not (tmp_path / "run").exists()


def test_dry_run_shows_pair_counts_and_writes_nothing(tmp_path: Path) -> None:
    rows = ranking_rows(10)
    rows[0]["ranking"] = ""  # not ranked yet: skipped and counted
    rows[1] = {"prompt": "Question: hi?\nAnswer:", "chosen": " hello, thanks", "rejected": " go away"}
    write_jsonl(tmp_path / "train.jsonl", rows)
    path = reward_recipe(tmp_path, data="train: train.jsonl, split: {test: 0.2, seed: 1}")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("rlhf", path, "--dry-run", "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["dry_run"] is True
    assert summary["rows"]["train"] + summary["rows"]["test"] == 10 and summary["rows"]["test"] == 2
    total = {k: sum(summary[k].values()) for k in ("rankings", "pair_rows", "pairs", "unranked")}
    assert total == {"rankings": 8, "pair_rows": 1, "pairs": 8 * 5 + 1, "unranked": 1}
    assert sum(summary["tied_pairs"].values()) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == before

    # rows without a prompt field, the prompt built by data.template
    rows = [{"topic": r["prompt"].split()[2].rstrip("?"), **r} for r in ranking_rows(6)]
    for row in rows:
        del row["prompt"]
    write_jsonl(tmp_path / "train.jsonl", rows)
    templated = "train: train.jsonl, split: {test: 0.5}, template: 'Question: my {{ topic }}? Answer:'"
    result = run_cli("rlhf", reward_recipe(tmp_path, data=templated), "--dry-run", "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr[-3000:]
    assert sum(result.json()["pairs"].values()) == 6 * 5


def three_annotators(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """alice and carol give each row its ranking; bob swaps its last two tiers on odd rows."""
    out = []
    for n, row in enumerate(rows):
        tiers = row.pop("ranking").split(" > ")
        bob = tiers[:-2] + tiers[-2:][::-1] if n % 2 else tiers
        row["rankings"] = {"alice": " > ".join(tiers), "bob": " > ".join(bob), "carol": " > ".join(tiers)}
        out.append(row)
    return out


@pytest.mark.slow
def test_several_annotators_train_under_majority_and_the_report_sets_their_agreement_beside(
    tmp_path: Path,
) -> None:
    write_jsonl(tmp_path / "train.jsonl", three_annotators(ranking_rows(16)))
    write_jsonl(tmp_path / "test.jsonl", three_annotators(ranking_rows(6, start=100)))
    every = run_cli("rlhf", reward_recipe(tmp_path), "--dry-run", "--json", cwd=tmp_path)
    assert every.code == 0, every.stderr[-3000:]
    assert every.json()["pairs"] == {"train": 3 * 16 * 5, "test": 3 * 6 * 5}  # aggregate: all
    path = reward_recipe(tmp_path, data="train: train.jsonl, test: test.jsonl, aggregate: majority")
    result = run_cli("rlhf", path, "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr[-3000:]
    assert result.json()["pairs"] == {"train": 16 * 5, "test": 6 * 5}  # alice and carol outvote bob
    evaluation = json.loads((tmp_path / "run" / "eval.json").read_text())
    # 22 rows x 3 annotator pairs x 6 response pairs; bob differs on one response pair of the 11
    # odd rows, against alice and against carol
    assert evaluation["annotator_agreement"] == pytest.approx((396 - 22) / 396)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## People's own agreement" in report and "data.aggregate: majority" in report
    assert "3 annotators ranked 22 rows in common" in report and "0.944 of the time" in report
    assert "cannot be expected to agree with people more than they agree with each other" in report


@pytest.mark.slow
def test_sigterm_then_resume_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    """RewardTrainer under the shared lifecycle: SIGTERM saves a checkpoint (exit 143), --resume
    continues from it and eval.json equals the uninterrupted run's."""
    import signal
    import subprocess
    import time

    training = "max_steps: 40, batch_size: 4, learning_rate: 5.0e-3, logging_steps: 1, eval_steps: 5"
    path = reward_recipe(tmp_path, training=training)
    straight = run_cli("rlhf", path, "--output", tmp_path / "straight", cwd=tmp_path)
    assert straight.code == 0, straight.stderr[-3000:]

    run = tmp_path / "cut"
    proc = start_cli(
        "rlhf",
        str(path),
        "--output",
        str(run),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )

    def steps() -> int:
        log = run / "metrics.jsonl"
        return sum('"step"' in line for line in log.read_text().splitlines()) if log.exists() else 0

    while steps() < 12 and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate()
    assert proc.returncode == 143, stderr[-3000:]
    assert not (run / "eval.json").exists()

    resumed = run_cli("rlhf", path, "--output", run, "--resume", cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    expected = json.loads((tmp_path / "straight" / "eval.json").read_text())
    assert json.loads((run / "eval.json").read_text()) == expected
