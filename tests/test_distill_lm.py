"""`llmtune distill` with `task: causal_lm`: a tiny language model trained by `llmtune finetune`
distilled into smaller students through the CLI (sequences, logits, on_policy); the token-level
loss against a direct computation; different vocabularies refused for logits and on_policy; a
sequences run killed while the teacher generates resumes without regenerating."""

from __future__ import annotations

import json
import math
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import assert_bad_input, invoke, read_jsonl, run_cli, start_cli, write, write_jsonl

WORDS = ["cat", "dog", "sun", "red", "blue", "tree", "fish", "bird", "moon", "star", "rock", "leaf"]


def echo(i: int, completion: bool = True) -> dict:
    row = {"prompt": f"Echo: {WORDS[i % 12]} {WORDS[(i // 12) % 12]}\nAnswer:"}
    if completion:
        row["completion"] = f" {WORDS[i % 12]} {WORDS[(i // 12) % 12]}"
    return row


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-block scratch llama (byte tokenizer) SFT-trained by `llmtune finetune` to echo."""
    folder = tmp_path_factory.mktemp("lm-teacher")
    write_jsonl(folder / "train.jsonl", [echo(i) for i in range(96)])
    recipe = write(
        folder / "teacher.yaml",
        """kind: finetune
task: causal_lm
model: {scratch: {architecture: llama, hidden_size: 48, num_layers: 4, num_heads: 2}}
method: {type: full}
data: {train: train.jsonl, max_length: 48}
training: {max_steps: 40, batch_size: 16, learning_rate: 1.0e-2}
output: {dir: run}
""",
    )
    result = run_cli("finetune", recipe, env={"OMP_NUM_THREADS": "1"})
    assert result.code == 0, result.stderr[-3000:]
    return folder / "run" / "model"


def lm_recipe(folder: Path, teacher: Path | dict, **overrides: object) -> Path:
    """24 transfer prompts (half with a gold completion) and 8 test rows."""
    write_jsonl(folder / "transfer.jsonl", [echo(i, completion=i % 2 == 0) for i in range(100, 124)])
    write_jsonl(folder / "test.jsonl", [echo(i) for i in range(200, 208)])
    recipe: dict = {
        "kind": "distill",
        "task": "causal_lm",
        "strategy": "sequences",
        "teacher": {"path": str(teacher)} if isinstance(teacher, Path) else teacher,
        "student": {"from_teacher": {"layers": [0, 3]}},
        "data": {"train": "transfer.jsonl", "test": "test.jsonl", "max_length": 48},
        "generation": {"max_new_tokens": 8, "stop": ["\n"]},
        "training": {"max_steps": 3, "batch_size": 8, "learning_rate": 5.0e-3, "logging_steps": 1},
        "measure_batch_size": 8,
        "output": {"dir": "run"},
    }
    recipe.update(overrides)
    return write(folder / "distill.yaml", yaml.safe_dump(recipe))


def check_report(run: Path, side: dict) -> None:
    """What every causal_lm run shows: teacher vs student sizes, speeds and test metrics."""
    assert side["student"]["params"] < side["teacher"]["params"]
    assert side["quality_kept_by"] == "exact_match" and side["speedup_by"] == "tokens_per_s"
    for name in ("teacher", "student"):
        assert side[name]["tokens_per_s"] > 0 and side[name]["perplexity"] > 1.0
        assert side[name]["perplexity"] == pytest.approx(math.exp(side[name]["loss"]), rel=1e-3)
    predictions = read_jsonl(run / "predictions.jsonl")
    assert len(predictions) == 8
    for name, key in (("teacher", "teacher_prediction"), ("student", "prediction")):
        hits = sum(p[key].strip() == p["gold"].strip() for p in predictions) / 8
        assert side[name]["exact_match"] == pytest.approx(hits, abs=1e-4)
    assert json.loads((run / "eval.json").read_text())["comparison"] == side
    assert "share of teacher exact_match" in (run / "report.md").read_text()


@pytest.mark.slow
def test_sequences_student_learns_the_teachers_completions(tmp_path: Path, teacher: Path) -> None:
    result = invoke("distill", lm_recipe(tmp_path, teacher), "--json")
    assert result.code == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    side = result.json()["distillation"]
    check_report(run, side)
    assert side["same_tokenizer"] is True
    # every transfer prompt completed once by the teacher, journaled with its completion
    journal = read_jsonl(run / "teacher_generations.jsonl")
    assert side["teacher_rows_generated"] == len(journal) == 24 and side["teacher_rows_reused"] == 0
    assert all(isinstance(r["completion"], str) for r in journal)
    assert (run / "model" / "config.json").exists()


@pytest.mark.slow
def test_sequences_across_tokenizers_with_a_scratch_student(tmp_path: Path, teacher: Path) -> None:
    student = {
        "scratch": {
            "architecture": "gpt2",
            "hidden_size": 16,
            "num_layers": 1,
            "num_heads": 2,
            "tokenizer": "train",
            "vocab_size": 300,
        }
    }
    result = invoke("distill", lm_recipe(tmp_path, teacher, student=student), "--json")
    assert result.code == 0, result.stderr[-3000:]
    side = result.json()["distillation"]
    assert side["same_tokenizer"] is False
    check_report(tmp_path / "run", side)
    assert "tokenize differently" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.slow
def test_logits_student_learns_the_teachers_distributions(tmp_path: Path, teacher: Path) -> None:
    rows = [echo(i) for i in range(100, 124)]  # logits: every transfer row has its completion
    # a learning rate the student (already close: teacher blocks) learns at; 5e-3 overshoots
    training = {"max_steps": 3, "batch_size": 8, "learning_rate": 1.0e-3, "logging_steps": 1}
    path = lm_recipe(tmp_path, teacher, strategy="logits", beta=0.5, temperature=2.0, training=training)
    write_jsonl(tmp_path / "transfer.jsonl", rows)
    result = invoke("distill", path, "--json")
    assert result.code == 0, result.stderr[-3000:]
    side = result.json()["distillation"]
    check_report(tmp_path / "run", side)
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    # learnt: on the held-out test rows the student's next-token distributions are closer to the
    # teacher's than those of the student it started as (teacher blocks 0 and 3, untrained)
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtune.models.students import keep_blocks

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    big = AutoModelForCausalLM.from_pretrained(teacher).eval()
    start = keep_blocks(copy.deepcopy(big), [0, 3]).eval()
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model").eval()
    rows = read_jsonl(tmp_path / "test.jsonl")
    before, after = forward_kl(big, start, tokenizer, rows), forward_kl(big, trained, tokenizer, rows)
    assert after < 0.8 * before, (before, after)  # measured: 0.076 -> 0.035


def forward_kl(teacher: object, student: object, tokenizer: object, rows: list[dict]) -> float:
    """Mean KL(teacher || student) of the next-token distributions over each row's completion."""
    import torch

    total, count = 0.0, 0
    for row in rows:
        start = len(tokenizer(row["prompt"])["input_ids"]) - 1  # type: ignore[operator]
        ids = tokenizer(row["prompt"] + row["completion"], return_tensors="pt")["input_ids"]  # type: ignore[operator]
        with torch.no_grad():
            t = teacher(ids).logits[0, start:-1].log_softmax(-1)  # type: ignore[operator]
            s = student(ids).logits[0, start:-1].log_softmax(-1)  # type: ignore[operator]
        kl = (t.exp() * (t - s)).sum(-1)
        total, count = total + kl.sum().item(), count + kl.numel()
    return total / count


@pytest.mark.slow
def test_logits_need_completions_and_one_vocabulary(tmp_path: Path, teacher: Path) -> None:
    # half the transfer rows have no completion: logits has nothing to compare on them
    path = lm_recipe(tmp_path, teacher, strategy="logits")
    assert_bad_input(invoke("distill", path), "transfer.jsonl:2", "train row has no completion")
    assert not (tmp_path / "run").exists()
    write_jsonl(tmp_path / "transfer.jsonl", [echo(i) for i in range(100, 124)])
    student = {
        "scratch": {
            "architecture": "llama",
            "hidden_size": 16,
            "num_layers": 1,
            "num_heads": 2,
            "tokenizer": "train",
            "vocab_size": 300,
        }
    }
    path = lm_recipe(tmp_path, teacher, strategy="logits", student=student)
    write_jsonl(tmp_path / "transfer.jsonl", [echo(i) for i in range(100, 124)])
    assert_bad_input(invoke("distill", path), "student", "same vocabulary", "strategy: sequences")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_on_policy_student_learns_from_its_own_completions(tmp_path: Path, teacher: Path) -> None:
    """TRL's DistillationTrainer: the student samples completions of prompt-only transfer rows,
    the teacher's distributions over them are the target; validation runs the same way."""
    from safetensors.torch import load_file

    write_jsonl(tmp_path / "validation.jsonl", [echo(i) for i in range(300, 304)])
    data = {
        "train": "transfer.jsonl",
        "validation": "validation.jsonl",
        "test": "test.jsonl",
        "max_length": 48,
    }
    path = lm_recipe(tmp_path, teacher, strategy="on_policy", beta=0.5, temperature=1.0, data=data)
    write_jsonl(tmp_path / "transfer.jsonl", [echo(i, completion=False) for i in range(100, 124)])
    result = invoke("distill", path, "--json")
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["strategy"] == "on_policy" and summary["steps"] == 3
    side = summary["distillation"]
    check_report(tmp_path / "run", side)
    assert side["same_tokenizer"] is True
    logged = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in logged if "loss" in r]
    assert len(steps) == 3 and all(math.isfinite(r["loss"]) and r["loss"] >= 0 for r in steps)
    # the student wrote the completions it learned on, within generation.max_new_tokens
    assert all(0 < r["completions/max_length"] <= 8 for r in steps)
    assert any(math.isfinite(r.get("eval_loss", math.nan)) for r in logged)
    # the student started as teacher blocks [0, 3]: training moved them away from the teacher's
    before = load_file(str(teacher / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    for mine, theirs in (("model.layers.0", "model.layers.0"), ("model.layers.1", "model.layers.3")):
        key = ".self_attn.q_proj.weight"
        assert after[mine + key].shape == before[theirs + key].shape
        assert not after[mine + key].equal(before[theirs + key]), mine


@pytest.mark.slow
def test_on_policy_needs_one_vocabulary(tmp_path: Path, teacher: Path) -> None:
    student = {
        "scratch": {
            "architecture": "llama",
            "hidden_size": 16,
            "num_layers": 1,
            "num_heads": 2,
            "tokenizer": "train",
            "vocab_size": 300,
        }
    }
    path = lm_recipe(tmp_path, teacher, strategy="on_policy", student=student)
    assert_bad_input(invoke("distill", path), "student", "strategy: on_policy", "same vocabulary")
    assert not (tmp_path / "run").exists()


def test_logits_loss_matches_a_direct_computation() -> None:
    import torch

    from llmtune.jobs.distill.lm_losses import token_distillation_loss

    torch.manual_seed(0)
    # the teacher's output layer has 2 padding rows beyond the 5-token vocabulary (as Qwen's)
    student = torch.randn(2, 4, 5)
    teacher = torch.randn(2, 4, 7)
    labels = torch.tensor([[-100, -100, 3, 1], [-100, 2, 4, -100]])
    T = 2.0

    def log_softmax(z: list[float]) -> list[float]:
        top = max(z)
        total = math.log(sum(math.exp(v - top) for v in z)) + top
        return [v - total for v in z]

    def direct(beta: float, alpha: float) -> float:
        kls, ces = [], []
        for b in range(2):
            for t in range(3):  # logits at t predict the label at t + 1
                if labels[b, t + 1] < 0:
                    continue
                ls = log_softmax([v / T for v in student[b, t, :5].tolist()])
                lt = log_softmax([v / T for v in teacher[b, t, :5].tolist()])
                p, q = [math.exp(v) for v in lt], [math.exp(v) for v in ls]
                forward = sum(pi * (a - c) for pi, a, c in zip(p, lt, ls))  # KL(teacher || student)
                reverse = sum(qi * (c - a) for qi, a, c in zip(q, lt, ls))  # KL(student || teacher)
                kls.append(forward if beta == 0 else reverse)
                ces.append(-log_softmax(student[b, t, :5].tolist())[int(labels[b, t + 1])])
        return alpha * T * T * sum(kls) / len(kls) + (1 - alpha) * sum(ces) / len(ces)

    for beta in (0.0, 1.0):
        for alpha in (1.0, 0.3):
            got = token_distillation_loss(
                student, teacher, labels, vocab_size=5, beta=beta, temperature=T, alpha=alpha
            )
            assert got.item() == pytest.approx(direct(beta, alpha), rel=1e-5), (beta, alpha)
    # in between, a divergence between the two KLs' extremes (0 only when the models agree)
    jsd = token_distillation_loss(student, teacher, labels, vocab_size=5, beta=0.5, temperature=T, alpha=1.0)
    same = token_distillation_loss(student, student, labels, vocab_size=5, beta=0.5, temperature=T, alpha=1.0)
    assert jsd.item() > 0 and same.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_a_killed_sequences_run_resumes_without_regenerating(tmp_path: Path) -> None:
    """SIGTERM once the generations journal holds its first chunk; --resume generates only the
    prompts the journal lacks."""
    rows = [{"prompt": " ".join(WORDS[(i + k) % 12] for k in range(20)) + f" {i}"} for i in range(240)]
    write_jsonl(tmp_path / "transfer.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", [echo(i) for i in range(8)])
    big = {"scratch": {"architecture": "llama", "hidden_size": 256, "num_layers": 4, "num_heads": 4}}
    small = {"scratch": {"architecture": "llama", "hidden_size": 16, "num_layers": 1, "num_heads": 2}}
    data = {"train": "transfer.jsonl", "test": "test.jsonl", "max_length": 256}
    path = lm_recipe(tmp_path, big, student=small, generation={"max_new_tokens": 12}, data=data)
    write_jsonl(tmp_path / "transfer.jsonl", rows)
    proc = start_cli(
        "distill",
        str(path),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # the first chunk is in the journal once its progress line is out
        if "teacher generated" in line:
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate()
    assert proc.returncode == 143
    run = tmp_path / "run"
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    before = len(read_jsonl(run / "teacher_generations.jsonl"))
    assert 16 <= before < 240

    resumed = invoke("distill", path, "--resume", "--json")
    assert resumed.code == 0, resumed.stderr[-3000:]
    side = resumed.json()["distillation"]
    assert side["teacher_rows_reused"] == before
    assert side["teacher_rows_generated"] == 240 - before
    ids = [r["id"] for r in read_jsonl(run / "teacher_generations.jsonl")]
    assert len(ids) == len(set(ids)) == 240
