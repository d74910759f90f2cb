"""The quickstart as a newcomer runs it: a real LoRA fine-tune of the pre-trained MiniLM, whose
saved model plain transformers + peft load and which reproduces llmtune's test predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, run_cli


@pytest.mark.slow
def test_quickstart_learns_and_loads_with_plain_libraries(tmp_path: Path) -> None:
    run = tmp_path / "quickstart"
    # two epochs instead of six keep the suite fast; the full recipe is what `make run` runs
    result = run_cli(
        "finetune",
        ROOT / "recipes" / "quickstart.yaml",
        "--output",
        run,
        "--json",
        "--set",
        "training.epochs=2",
    )
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert summary["trainable_params"] < summary["total_params"] * 0.05  # LoRA, not full
    before, after = summary["test_before"]["accuracy"], summary["test"]["accuracy"]
    assert after >= 0.75 and after - before >= 0.2, (before, after)
    assert "before training" in result.stderr and "after training" in result.stderr
    report = (run / "report.md").read_text()
    assert "![training curves](training_curves.png)" in report and "## Confusion matrix" in report
    assert (run / "training_curves.png").read_bytes()[:4] == b"\x89PNG"

    # the README's loading recipe, verbatim in spirit: plain transformers + peft
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = run / "model"
    config = AutoConfig.from_pretrained(path)
    assert config.id2label == {0: "negative", 1: "positive"}
    base = AutoModelForSequenceClassification.from_pretrained(
        PeftConfig.from_pretrained(path).base_model_name_or_path, config=config
    )
    model = PeftModel.from_pretrained(base, path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)

    rows = [json.loads(line) for line in (ROOT / "data/sentiment/test.jsonl").read_text().splitlines()]
    predicted = []
    with torch.no_grad():
        for start in range(0, len(rows), 32):
            batch = tokenizer(
                [r["review"] for r in rows[start : start + 32]],
                truncation=True,
                max_length=128,
                padding=True,
                return_tensors="pt",
            )
            predicted += [config.id2label[int(i)] for i in model(**batch).logits.argmax(-1)]
    labels = ["negative", "positive"]
    matrix = [
        [sum(1 for r, p in zip(rows, predicted) if r["sentiment"] == g and p == q) for q in labels]
        for g in labels
    ]
    evaluation = json.loads((run / "eval.json").read_text())["metrics"]
    assert evaluation["confusion_matrix"]["matrix"] == matrix
    assert abs(evaluation["accuracy"] - after) < 1e-3
    saved = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in saved] == [r["id"] for r in rows]
    assert [p["prediction"] for p in saved] == predicted  # row by row, the same predictions
    assert [p["gold"] for p in saved] == [r["sentiment"] for r in rows]

    # peft's one-liner reads the base's config (LABEL_0/1): the README passes the run's label names
    from peft import AutoPeftModelForSequenceClassification

    one_liner = AutoPeftModelForSequenceClassification.from_pretrained(
        path, id2label=AutoConfig.from_pretrained(path).id2label
    ).eval()
    assert one_liner.config.id2label == {0: "negative", 1: "positive"}
    with torch.no_grad():
        batch = tokenizer(
            [r["review"] for r in rows[:32]],
            truncation=True,
            max_length=128,
            padding=True,
            return_tensors="pt",
        )
        again = [one_liner.config.id2label[int(i)] for i in one_liner(**batch).logits.argmax(-1)]
    assert again == predicted[:32]
    # the adapter names its base by hub id, so it loads on any machine that has the model
    assert (
        PeftConfig.from_pretrained(path).base_model_name_or_path == "sentence-transformers/all-MiniLM-L6-v2"
    )
