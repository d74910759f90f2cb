"""`llmtune finetune` with `task: regression`: numeric labels (checked with file:line), a one-output
head, metrics that equal scikit-learn / scipy computed on predictions.jsonl (overall and per
slice), the best checkpoint kept by a lower-is-better metric, and bulk-infer `task: score` with
the trained model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import assert_bad_input, read_jsonl, run_cli, write, write_jsonl

WORDS = ["cat", "dog", "sun", "tree", "fish", "bird"]
CATEGORIES = ["books", "garden", "kitchen"]


def rating_rows(n: int, start: int = 0) -> list[dict]:
    """Rows whose rating (1-5) is the number of "good" words, with an id and a category."""
    rows = []
    for i in range(start, start + n):
        stars = i % 5 + 1
        words = ["good"] * stars + ["bad"] * (5 - stars)
        rows.append(
            {
                "id": f"r{i:03d}",
                "review": f"the {WORDS[i % 6]} is {' '.join(words)}",
                "stars": stars,
                "category": CATEGORIES[i % 3],
            }
        )
    return rows


def regression_recipe(folder: Path, extra: str = "", training: str = "") -> Path:
    write_jsonl(folder / "train.jsonl", rating_rows(36))
    write_jsonl(folder / "test.jsonl", rating_rows(15, start=36))
    training = training or "max_steps: 4, batch_size: 8, learning_rate: 1.0e-3, logging_steps: 1"
    return write(
        folder / "regression.yaml",
        f"""kind: finetune
task: regression
label_range: [1, 5]
model: {{scratch: {{architecture: bert, hidden_size: 32, num_layers: 2, num_heads: 2}}}}
method: {{type: full}}
data: {{train: train.jsonl, test: test.jsonl, columns: {{text: review, label: stars}}, max_length: 32}}
training: {{{training}}}
output: {{dir: run}}
{extra}""",
    )


def reference_metrics(gold: list[float], predicted: list[float]) -> dict[str, float]:
    """The five metrics straight from scikit-learn and scipy."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {
        "mae": mean_absolute_error(gold, predicted),
        "rmse": math.sqrt(mean_squared_error(gold, predicted)),
        "r2": r2_score(gold, predicted),
        "pearson": pearsonr(gold, predicted).statistic,
        "spearman": spearmanr(gold, predicted).statistic,
    }


def assert_metrics_match(reported: dict, gold: list[float], predicted: list[float]) -> None:
    expected = reference_metrics(gold, predicted)
    for name, value in expected.items():
        assert reported[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert reported["n"] == len(gold)


@pytest.mark.slow
def test_regression_run_metrics_slices_and_bulk_infer_scores(tmp_path: Path) -> None:
    path = regression_recipe(tmp_path, extra="evaluation: {slices: [category]}\n")
    result = run_cli("finetune", path, "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    summary = result.json()
    assert summary["task"] == "regression"
    assert set(summary["test"]) >= {"mae", "rmse", "r2", "pearson", "spearman", "slices"}

    # eval.json is scikit-learn / scipy on the predictions file, in stars (scaled back from 0..1)
    predictions = read_jsonl(run / "predictions.jsonl")
    test_rows = {r["id"]: r for r in rating_rows(15, start=36)}
    assert [p["id"] for p in predictions] == list(test_rows)
    assert all(p["gold"] == test_rows[p["id"]]["stars"] for p in predictions)
    assert all(p["text"] == test_rows[p["id"]]["review"] for p in predictions)
    gold = [p["gold"] for p in predictions]
    predicted = [p["prediction"] for p in predictions]
    assert len(set(predicted)) > 1
    metrics = json.loads((run / "eval.json").read_text())["metrics"]
    assert_metrics_match(metrics, gold, predicted)
    assert summary["test"]["mae"] == pytest.approx(metrics["mae"], abs=1e-4)

    # each slice's metrics are the same functions on that slice's rows of predictions.jsonl
    slices = metrics["slices"]["category"]
    assert set(slices["values"]) == set(CATEGORIES)
    for category, reported in slices["values"].items():
        rows = [p for p in predictions if test_rows[p["id"]]["category"] == category]
        assert_metrics_match(reported, [p["gold"] for p in rows], [p["prediction"] for p in rows])
    maes = {c: s["mae"] for c, s in slices["values"].items()}
    assert slices["worst"]["mae"] == max(maes, key=maes.__getitem__)  # lower is better for mae
    assert slices["gap"]["mae"] == pytest.approx(max(maes.values()) - min(maes.values()))

    report = (run / "report.md").read_text()
    assert "![predicted vs true](predicted_vs_true.png)" in report
    assert (run / "predicted_vs_true.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Slices by `category`" in report and "| spearman |" in report
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["label_range"] == [1, 5]
    assert config["id2label"] == {"0": "score"}

    # bulk-infer with the trained model writes the same score, in stars, per row
    bulk = {
        "kind": "bulk-infer",
        "model": {"path": "run/model"},
        "input": {"path": "test.jsonl", "id_column": "id"},
        "template": "{{ review }}",
        "task": "score",
        "output": {"path": "out/scores.jsonl"},
    }
    write(tmp_path / "score.yaml", json.dumps(bulk))
    scored = run_cli("bulk-infer", tmp_path / "score.yaml", cwd=tmp_path)
    assert scored.code == 0, scored.stderr[-3000:]
    scores = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "scores.jsonl")}
    assert set(scores) == set(test_rows)
    for p in predictions:
        assert isinstance(scores[p["id"]]["score"], float) and "label" not in scores[p["id"]]
        assert scores[p["id"]]["score"] == pytest.approx(p["prediction"], abs=1e-4)
    assert {"model_fingerprint", "prompt_fingerprint"} <= set(scores["r036"])
    again = run_cli("bulk-infer", tmp_path / "score.yaml", "--json", cwd=tmp_path)
    assert again.code == 0 and again.json()["rows_done"] == 0  # resumed: every id already scored

    # a regression model cannot classify, and a classifier's task cannot be score
    write(tmp_path / "classify.yaml", json.dumps({**bulk, "task": "classify", "labels": ["a", "b"]}))
    refused = run_cli("bulk-infer", tmp_path / "classify.yaml", cwd=tmp_path)
    assert_bad_input(refused, "regression head", "use task: score")


def test_a_non_numeric_label_is_refused_with_file_and_line(tmp_path: Path) -> None:
    path = regression_recipe(tmp_path)
    rows = rating_rows(36)
    rows[2]["stars"] = "great"
    rows[4]["stars"] = "NaN"
    rows[6]["stars"] = True
    write_jsonl(tmp_path / "train.jsonl", rows)
    result = run_cli("finetune", path, cwd=tmp_path)
    assert_bad_input(
        result,
        "train.jsonl:3: label: expected a number, got 'great'",
        "train.jsonl:5: label: expected a finite number, got 'NaN'",
        "train.jsonl:7: label: expected a number, got bool True",
    )
    assert not (tmp_path / "run").exists()

    rows[2]["stars"], rows[4]["stars"], rows[6]["stars"] = "4.5", 2, 3  # numbers as text are numbers
    write_jsonl(tmp_path / "train.jsonl", rows)
    assert run_cli("finetune", path, "--dry-run", cwd=tmp_path).code == 0
    outside = run_cli("finetune", path, "--dry-run", "--set", "label_range=[1, 4]", cwd=tmp_path)
    # identical problems are one line: the count, the first row, the other rows
    assert_bad_input(outside, "train.jsonl:3: label: 4.5 is outside label_range [1, 4]", "line 10")


@pytest.mark.slow
def test_early_stopping_on_mae_keeps_the_lowest_with_huber_loss(tmp_path: Path) -> None:
    training = (
        "max_steps: 8, batch_size: 4, learning_rate: 3.0e-3, logging_steps: 1, eval_steps: 1, "
        "early_stopping: {patience: 8, metric: mae, min_rows: 1}"  # a tiny split: choose on it anyway
    )
    path = regression_recipe(tmp_path, extra="loss: huber\n", training=training)
    text = path.read_text().replace("test: test.jsonl,", "test: test.jsonl, split: {validation: 0.25},")
    path.write_text(text)
    result = run_cli("finetune", path, "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    during = [r["eval_mae"] for r in logged if "eval_mae" in r and r["step"] <= summary["steps"]]
    assert len(set(during)) > 1
    # mae falls as the model improves: the kept checkpoint is the one with the lowest
    assert summary["validation"]["eval_mae"] == pytest.approx(min(during))


def test_huber_loss_is_measured_in_the_labels_units() -> None:
    """With label_range [1, 5] the head learns 0..1, and Huber's delta is one star (0.25)."""
    from types import SimpleNamespace

    import torch

    from llmtune.jobs.finetune.regression import huber_loss

    loss = huber_loss((1.0, 5.0))
    labels = torch.tensor([0.0, 0.0])
    small, large = torch.tensor([[0.1], [0.1]]), torch.tensor([[0.75], [0.75]])  # 0.4 and 3 stars off
    assert float(loss(SimpleNamespace(logits=small), labels)) == pytest.approx(0.5 * 0.1**2)
    assert float(loss(SimpleNamespace(logits=large), labels)) == pytest.approx(0.25 * (0.75 - 0.125))


def test_regression_metrics_say_when_a_correlation_is_undefined() -> None:
    from llmtune.metrics import lower_is_better, regression_metrics

    constant = regression_metrics([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert constant["pearson"] is None and constant["spearman"] is None
    assert constant["mae"] == pytest.approx(2 / 3) and constant["r2"] == pytest.approx(0.0)
    assert [lower_is_better(m) for m in ("eval_mae", "rmse", "eval_loss", "eval_r2", "pearson")] == [
        True,
        True,
        True,
        False,
        False,
    ]
