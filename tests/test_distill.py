"""`llmtune distill`: a tiny trained teacher distilled into smaller students, end to end through the
CLI; the KD loss against a direct computation; a killed run resumes without relabelling; every
refusal exits 2 and writes nothing; a trimmed student loads with plain transformers."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import assert_bad_input, invoke, read_jsonl, run_cli, start_cli, write, write_jsonl

GOOD = ["good", "great", "lovely", "fine", "superb"]
BAD = ["bad", "awful", "poor", "broken", "dreadful"]
THINGS = ["lamp", "chair", "phone", "book", "coat", "bike", "mug", "kettle"]
# words only the teacher's training rows use: their tokens are what trim_vocab drops
ELSEWHERE = ["umbrella", "xylophone", "quartz", "jackdaw", "velvet", "zeppelin", "marmalade", "hovercraft"]


def review(i: int, labelled: bool = True) -> dict:
    positive = i % 2 == 1
    word = (GOOD if positive else BAD)[(i // 2) % 5]
    row = {"text": f"the {THINGS[i % 8]} is {word} {THINGS[(i // 3) % 8]}"}
    if labelled:
        row["label"] = "pos" if positive else "neg"
    return row


def trained_teacher(folder: Path, rows: list[dict], max_steps: int, **task: object) -> Path:
    """A 4-block scratch bert trained by `llmtune finetune` on `rows` (`task`: its task keys)."""
    write_jsonl(folder / "train.jsonl", rows)
    scratch = {"architecture": "bert", "hidden_size": 32, "num_layers": 4, "num_heads": 2}
    recipe = {
        "kind": "finetune",
        **task,
        "model": {"scratch": {**scratch, "tokenizer": "train", "vocab_size": 400}},
        "method": {"type": "full"},
        "data": {"train": "train.jsonl", "max_length": 32},
        "training": {"max_steps": max_steps, "batch_size": 8, "learning_rate": 5.0e-3},
        "output": {"dir": "run"},
    }
    result = run_cli(
        "finetune", write(folder / "teacher.yaml", yaml.safe_dump(recipe)), env={"OMP_NUM_THREADS": "1"}
    )
    assert result.code == 0, result.stderr[-3000:]
    return folder / "run" / "model"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier trained until it tells the labels apart."""
    rows = [{**review(i), "text": review(i)["text"] + " " + ELSEWHERE[i % 8]} for i in range(80)]
    return trained_teacher(tmp_path_factory.mktemp("teacher"), rows, max_steps=40)


def distill_recipe(folder: Path, teacher: Path, **overrides: object) -> Path:
    """A distill recipe over 40 transfer rows (a third with gold labels) and 16 test rows."""
    write_jsonl(folder / "transfer.jsonl", [review(i, labelled=i % 3 == 0) for i in range(100, 140)])
    write_jsonl(folder / "test.jsonl", [review(i) for i in range(200, 216)])
    recipe: dict = {
        "kind": "distill",
        "teacher": {"path": str(teacher)},
        "student": {"from_teacher": {"layers": [0, 2]}, "trim_vocab": True},
        "data": {"train": "transfer.jsonl", "test": "test.jsonl", "max_length": 32},
        "training": {"max_steps": 4, "batch_size": 8, "learning_rate": 5.0e-3, "logging_steps": 1},
        "measure_batch_size": 8,
        "output": {"dir": "run"},
    }
    for key, value in overrides.items():
        recipe[key] = value
    return write(folder / "distill.yaml", yaml.safe_dump(recipe))


@pytest.mark.slow
def test_soft_labels_from_teacher_blocks_with_trimmed_vocabulary(tmp_path: Path, teacher: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result = invoke("distill", distill_recipe(tmp_path, teacher), "--json")
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    run = tmp_path / "run"
    side = summary["distillation"]
    assert side["student"]["params"] < side["teacher"]["params"]
    assert side["size_ratio"] == round(side["student"]["params"] / side["teacher"]["params"], 4)
    assert side["quality_kept"] == round(side["student"]["accuracy"] / side["teacher"]["accuracy"], 4)
    assert side["teacher"]["rows_per_s"] > 0 and side["student"]["rows_per_s"] > 0
    assert side["measured_on"]["rows"] == 16
    # 40 transfer + 16 test rows, all distinct: each labelled by the teacher once
    assert side["teacher_rows_labelled"] == 56 and side["teacher_rows_reused"] == 0
    assert len(read_jsonl(run / "teacher_labels.jsonl")) == 56
    # the baseline trained on the 13 gold-labelled transfer rows (i % 3 == 0 of 100..139)
    assert side["baseline_rows"] == 13 and side["baseline"]["accuracy"] is not None
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["comparison"] == side
    assert evaluation["teacher"]["accuracy"] == pytest.approx(side["teacher"]["accuracy"], abs=1e-4)
    assert evaluation["metrics"]["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-4)
    report = (run / "report.md").read_text()
    assert "| teacher |" in report and "| student |" in report and "student on gold labels only" in report
    assert "teacher vs student" in result.stderr

    # the teacher's labels in predictions.jsonl are its real predictions (accuracy from them)
    predictions = read_jsonl(run / "predictions.jsonl")
    assert len(predictions) == 16
    teacher_right = sum(p["teacher_prediction"] == p["gold"] for p in predictions) / 16
    assert teacher_right == pytest.approx(side["teacher"]["accuracy"], abs=1e-4)

    # the trimmed student is a standard model + tokenizer: plain transformers predicts the same
    model = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.vocab_size < json.loads((teacher / "config.json").read_text())["vocab_size"]
    assert model.config.num_hidden_layers == 2
    texts = [p["text"] for p in predictions]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    labels = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    assert labels == [p["prediction"] for p in predictions]


@pytest.mark.slow
def test_hard_labels_with_a_scratch_student_and_no_baseline(
    tmp_path: Path, teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In this process, the loss spied on: every training step learns the teacher's argmax."""
    import torch.nn.functional as F

    import llmtune.jobs.distill.losses as losses

    real, steps = losses.distillation_loss, []

    def spy(student_logits, teacher_probs, gold, **kwargs):  # type: ignore[no-untyped-def]
        loss = real(student_logits, teacher_probs, gold, **kwargs)
        # with alpha: 1 the loss is cross-entropy on the teacher's argmax, whatever the gold
        hard = F.cross_entropy(student_logits.float(), teacher_probs.argmax(-1))
        steps.append((kwargs["hard"], loss.item(), hard.item()))
        return loss

    monkeypatch.setattr(losses, "distillation_loss", spy)
    student = {"scratch": {"architecture": "bert", "hidden_size": 16, "num_layers": 1, "num_heads": 2}}
    path = distill_recipe(
        tmp_path, teacher, student=student, strategy="hard_labels", baseline=False, alpha=1.0
    )
    result = invoke("distill", path, "--json")
    assert result.code == 0, result.stderr[-3000:]
    assert len(steps) >= 4 and all(h for h, _, _ in steps), steps  # 4 steps (and evaluation, if any)
    assert all(loss == pytest.approx(hard, rel=1e-5) for _, loss, hard in steps), steps
    side = result.json()["distillation"]
    assert side["baseline"] is None
    assert side["student"]["params"] < side["teacher"]["params"]
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["baseline"] is None


def test_kd_loss_matches_a_direct_computation() -> None:
    import torch

    from llmtune.jobs.distill.losses import distillation_loss

    student = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.3, -0.2], [1.5, 1.0, -3.0]])
    teacher = torch.softmax(torch.tensor([[1.0, 0.0, -1.0], [-2.0, 2.0, 0.0], [0.2, 0.1, 0.0]]), -1)
    gold = torch.tensor([0, -100, 2])
    T, alpha = 3.0, 0.25

    def soft(z: list[float], t: float) -> list[float]:
        e = [math.exp(v / t) for v in z]
        return [v / sum(e) for v in e]

    expected = []
    for s, p, g in zip(student.tolist(), teacher.tolist(), gold.tolist()):
        pt = soft([math.log(v) for v in p], T)  # the teacher's logits are log p up to a constant
        ps = soft(s, T)
        kd = T * T * sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))
        ce = -math.log(soft(s, 1.0)[g]) if g >= 0 else 0.0
        expected.append(alpha * kd + (1 - alpha) * ce if g >= 0 else kd)
    got = distillation_loss(student, teacher, gold, temperature=T, alpha=alpha)
    assert got.item() == pytest.approx(sum(expected) / 3, rel=1e-5)

    hard = []
    for s, p, g in zip(student.tolist(), teacher.tolist(), gold.tolist()):
        ce_teacher = -math.log(soft(s, 1.0)[p.index(max(p))])
        ce_gold = -math.log(soft(s, 1.0)[g]) if g >= 0 else 0.0
        hard.append(alpha * ce_teacher + (1 - alpha) * ce_gold if g >= 0 else ce_teacher)
    got = distillation_loss(student, teacher, gold, temperature=T, alpha=alpha, hard=True)
    assert got.item() == pytest.approx(sum(hard) / 3, rel=1e-5)


@pytest.mark.slow
def test_a_killed_distill_resumes_without_relabelling(tmp_path: Path) -> None:
    """SIGTERM once the journal holds its first chunk (of 64 rows; 1016 to label, so the kill
    lands long before the end); --resume labels only the missing rows."""
    rows = [{"text": " ".join(THINGS[(i + k) % 8] for k in range(40)) + f" {i}"} for i in range(1000)]
    write_jsonl(tmp_path / "transfer.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", [review(i) for i in range(16)])
    recipe = {
        "kind": "distill",
        "labels": ["neg", "pos"],
        "teacher": {"scratch": {"architecture": "bert", "hidden_size": 256, "num_layers": 4, "num_heads": 4}},
        "student": {"scratch": {"architecture": "bert", "hidden_size": 16, "num_layers": 1, "num_heads": 2}},
        "baseline": False,
        "data": {"train": "transfer.jsonl", "test": "test.jsonl", "max_length": 64},
        "training": {"max_steps": 2, "batch_size": 8},
        "output": {"dir": "run"},
    }
    path = write(tmp_path / "slow.yaml", yaml.safe_dump(recipe))
    proc = start_cli(
        "distill",
        str(path),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # the first chunk is in the journal once its progress line is out
        if "teacher labelled" in line:
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate()
    assert proc.returncode == 143
    run = tmp_path / "run"
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    before = len(read_jsonl(run / "teacher_labels.jsonl"))
    assert before >= 64

    resumed = invoke("distill", path, "--resume", "--json")
    assert resumed.code == 0, resumed.stderr[-3000:]
    side = resumed.json()["distillation"]
    total = 1000 + 16
    assert side["teacher_rows_reused"] == before
    assert side["teacher_rows_labelled"] == total - before
    ids = [r["id"] for r in read_jsonl(run / "teacher_labels.jsonl")]
    assert len(ids) == len(set(ids)) == total


def _refused(tmp_path: Path, result: object, *fragments: str) -> None:
    assert_bad_input(result, *fragments)  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists(), "a refused run wrote something"


@pytest.mark.slow
def test_a_student_that_is_not_smaller_is_refused(tmp_path: Path, teacher: Path) -> None:
    every_block = distill_recipe(tmp_path, teacher, student={"from_teacher": {"layers": [0, 1, 2, 3]}})
    _refused(tmp_path, invoke("distill", every_block), "student.from_teacher.layers", "must keep fewer")
    big = {"scratch": {"architecture": "bert", "hidden_size": 128, "num_layers": 4, "num_heads": 2}}
    bigger = distill_recipe(tmp_path, teacher, student=big)
    _refused(tmp_path, invoke("distill", bigger), "student", "must be smaller")
    beyond = distill_recipe(tmp_path, teacher, student={"from_teacher": {"layers": [0, 7]}})
    _refused(tmp_path, invoke("distill", beyond), "there is no block 7")


@pytest.mark.slow
def test_label_sets_that_differ_are_refused(tmp_path: Path, teacher: Path) -> None:
    other = tmp_path / "other-student"
    shutil.copytree(teacher, other)
    config = json.loads((other / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "spam", "1": "ham"}, {"spam": 0, "ham": 1}
    (other / "config.json").write_text(json.dumps(config))
    student = {"path": str(other)}
    _refused(tmp_path, invoke("distill", distill_recipe(tmp_path, teacher, student=student)), "differ from")
    wrong_labels = distill_recipe(tmp_path, teacher, labels=["negative", "positive"])
    _refused(tmp_path, invoke("distill", wrong_labels), "labels", "differ from the teacher's labels")
    test_rows = [{**review(i), "label": "meh"} for i in range(4)]
    path = distill_recipe(tmp_path, teacher)
    write_jsonl(tmp_path / "test.jsonl", test_rows)
    _refused(tmp_path, invoke("distill", path), "test.jsonl:1", "'meh' is not one of the teacher's labels")


# ------------------------------------------------------------------ regression (strategy: scores)
def rating(i: int, labelled: bool = True) -> dict:
    """A review whose star rating (1..5) is the number of good words in it."""
    stars = 1 + i % 5
    words = [GOOD[(i + k) % 5] for k in range(stars - 1)] + [BAD[(i + k) % 5] for k in range(5 - stars)]
    row: dict = {"text": f"the {THINGS[i % 8]} is " + " ".join(words)}
    if labelled:
        row["label"] = stars
    return row


@pytest.fixture(scope="module")
def regression_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A regression model (task: regression) trained on 1..5 ratings."""
    rows = [rating(i) for i in range(80)]
    folder = tmp_path_factory.mktemp("regression-teacher")
    return trained_teacher(folder, rows, max_steps=30, task="regression", label_range=[1, 5])


def regression_recipe(folder: Path, teacher: Path, **overrides: object) -> Path:
    """40 transfer rows (a third with gold ratings) and 16 labelled test rows."""
    write_jsonl(folder / "transfer.jsonl", [rating(i, labelled=i % 3 == 0) for i in range(100, 140)])
    write_jsonl(folder / "test.jsonl", [rating(i) for i in range(200, 216)])
    recipe: dict = {
        "kind": "distill",
        "task": "regression",
        "strategy": "scores",
        "teacher": {"path": str(teacher)},
        "student": {"from_teacher": {"layers": [0, 2]}},
        "data": {"train": "transfer.jsonl", "test": "test.jsonl", "max_length": 32},
        "training": {"max_steps": 4, "batch_size": 8, "learning_rate": 5.0e-3, "logging_steps": 1},
        "measure_batch_size": 8,
        "output": {"dir": "run"},
    }
    recipe.update(overrides)
    return write(folder / "distill.yaml", yaml.safe_dump(recipe))


@pytest.mark.slow
def test_regression_student_learns_the_teachers_scores(tmp_path: Path, regression_teacher: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmtune.metrics import regression_metrics

    result = invoke("distill", regression_recipe(tmp_path, regression_teacher), "--json")
    assert result.code == 0, result.stderr[-3000:]
    side = result.json()["distillation"]
    run = tmp_path / "run"
    assert side["student"]["params"] < side["teacher"]["params"]
    assert side["quality_kept_by"] == "spearman"
    # each distinct text is scored once (the ratings repeat every 40 rows)
    distinct = len({rating(i)["text"] for i in [*range(100, 140), *range(200, 216)]})
    assert side["teacher_rows_scored"] == distinct and side["teacher_rows_reused"] == 0
    assert side["baseline_rows"] == 13 and side["baseline"]["mae"] is not None  # i % 3 == 0 of 100..139
    journal = read_jsonl(run / "teacher_labels.jsonl")
    assert len(journal) == distinct and all(isinstance(r["score"], float) for r in journal)

    # the teacher's and the student's metrics are those of predictions.jsonl's scores
    predictions = read_jsonl(run / "predictions.jsonl")
    gold = [p["gold"] for p in predictions]
    teacher = regression_metrics(gold, [p["teacher_prediction"] for p in predictions])
    student = regression_metrics(gold, [p["prediction"] for p in predictions])
    assert side["teacher"]["mae"] == pytest.approx(teacher["mae"], abs=1e-4)
    assert side["student"]["rmse"] == pytest.approx(student["rmse"], abs=1e-4)
    if teacher["spearman"] and student["spearman"] is not None:
        assert side["quality_kept"] == pytest.approx(student["spearman"] / teacher["spearman"], abs=1e-3)
    # teacher scores are the label's units (1..5), as a run of the teacher model gives them
    assert all(0.0 < p["teacher_prediction"] < 6.0 for p in predictions)
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["comparison"] == side
    assert "share of teacher spearman" in (run / "report.md").read_text()

    # the student saves as a plain regression model that keeps the teacher's label_range
    model = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    assert model.config.num_labels == 1 and model.config.label_range == [1, 5]
    with torch.no_grad():
        out = model(**tokenizer([p["text"] for p in predictions], padding=True, return_tensors="pt")).logits
    scores = [1 + 4 * float(v) for v in out.reshape(-1)]
    assert scores == pytest.approx([p["prediction"] for p in predictions], abs=1e-4)


@pytest.mark.slow
def test_regression_and_classification_models_do_not_mix(
    tmp_path: Path, regression_teacher: Path, teacher: Path
) -> None:
    # a classifier teacher for task: regression
    _refused(tmp_path, invoke("distill", regression_recipe(tmp_path, teacher)), "teacher", "classifier")
    # a regression teacher for task: classification
    _refused(tmp_path, invoke("distill", distill_recipe(tmp_path, regression_teacher)), "task: regression")
    # a classifier student for a regression teacher, and the other way round
    path = regression_recipe(tmp_path, regression_teacher, student={"path": str(teacher)})
    _refused(tmp_path, invoke("distill", path), "student.path", "the student is a classifier")
    path = distill_recipe(tmp_path, teacher, student={"path": str(regression_teacher)})
    _refused(tmp_path, invoke("distill", path), "student.path", "the student is a regression model")
    # gold scores must be numbers
    path = regression_recipe(tmp_path, regression_teacher)
    write_jsonl(tmp_path / "test.jsonl", [{**rating(i), "label": "five"} for i in range(3)])
    _refused(tmp_path, invoke("distill", path), "test.jsonl:2", "expected a number")


def teacher_outputs(run: Path) -> dict[str, object]:
    """The teacher's journal: input id -> its label probabilities or score."""
    return {r["id"]: r.get("scores", r.get("score")) for r in read_jsonl(run / "teacher_labels.jsonl")}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_engine_onnx_teacher_labels_as_engine_hf_does(
    tmp_path: Path, teacher: Path, regression_teacher: Path, task: str
) -> None:
    """engine: onnx exports the teacher once into its cache and labels (scores) every transfer
    and test row on ONNX Runtime: the same rows as engine hf, outputs within float32 noise."""
    pytest.importorskip("onnxruntime")
    make, model = (
        (distill_recipe, teacher) if task == "classification" else (regression_recipe, regression_teacher)
    )
    runs = {}
    for engine in ("hf", "onnx"):
        folder = tmp_path / engine
        result = invoke("distill", make(folder, model, engine=engine), "--json")
        assert result.code == 0, result.stderr[-3000:]
        assert ("engine onnx: exporting" in result.stderr) == (engine == "onnx")
        runs[engine] = teacher_outputs(folder / "run")
    assert sorted(runs["onnx"]) == sorted(runs["hf"]) and len(runs["hf"]) >= 40
    for key, expected in runs["hf"].items():
        assert runs["onnx"][key] == pytest.approx(expected, abs=1e-4), key


def test_engine_onnx_does_not_generate_for_a_causal_lm_teacher(tmp_path: Path) -> None:
    (tmp_path / "teacher").mkdir()
    path = distill_recipe(
        tmp_path, tmp_path / "teacher", task="causal_lm", strategy="sequences", engine="onnx"
    )
    result = invoke("distill", path, "--dry-run")
    assert_bad_input(result, "engine: onnx", "does not generate", "engine: hf or vllm")
    assert not (tmp_path / "run").exists()
