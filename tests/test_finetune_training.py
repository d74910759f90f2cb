"""Training behaviour: SIGTERM + --resume ends where an uninterrupted run ends, early stopping
keeps the best checkpoint, and merged exports predict exactly what the adapter predicts."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    TRAINING,
    assert_bad_input,
    classification_data,
    initial_weights,
    invoke,
    recipe,
    run_cli,
    sft_data,
    start_cli,
    write,
)


def resumable_recipe(folder: Path) -> Path:
    classification_data(folder)
    return write(
        folder / "resume.yaml",
        """kind: finetune
model: {scratch: {architecture: llama, hidden_size: 32, num_layers: 2, num_heads: 2}}
method: {type: lora, r: 4}
data: {train: cls_train.jsonl, test: cls_test.jsonl, split: {validation: 0.25}, max_length: 32}
training: {max_steps: 12, batch_size: 4, eval_steps: 4, logging_steps: 1, learning_rate: 5.0e-3}
output: {dir: run}
""",
    )


def _steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    return max((json.loads(line)["step"] for line in path.read_text().splitlines() if line), default=0)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = resumable_recipe(tmp_path)
    assert invoke("finetune", path, "--output", tmp_path / "straight").code == 0

    run = tmp_path / "interrupted"
    proc = start_cli(
        "finetune",
        str(path),
        "--output",
        str(run),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while _steps_logged(run) < 5 and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate()
    assert proc.returncode == 143, stderr[-3000:]
    assert "rerun with --resume" in stderr
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    assert list((run / "checkpoints").glob("checkpoint-*")), "no checkpoint saved on SIGTERM"
    assert not (run / "eval.json").exists()

    resumed = run_cli("finetune", path, "--output", run, "--resume")
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
    straight = tmp_path / "straight"
    assert json.loads((run / "eval.json").read_text()) == json.loads((straight / "eval.json").read_text())
    a = load_file(run / "model" / "adapter_model.safetensors")
    b = load_file(straight / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.slow
def test_sigint_stops_with_130_and_a_resumable_run(tmp_path: Path) -> None:
    path = resumable_recipe(tmp_path)
    run = tmp_path / "run"
    proc = start_cli("finetune", str(path), stderr=subprocess.PIPE, text=True)
    while _steps_logged(run) < 2 and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate()
    assert proc.returncode == 130, stderr[-3000:]
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    assert list((run / "checkpoints").glob("checkpoint-*"))

    # resuming with a changed recipe is refused (only keys such as max_steps may change)
    manifest = (run / "manifest.json").read_text()
    changed = run_cli("finetune", path, "--resume", "--set", "training.learning_rate=0.5")
    assert_bad_input(changed, "--resume needs the recipe of the interrupted run", "training.learning_rate")
    assert (run / "manifest.json").read_text() == manifest


@pytest.mark.slow
def test_early_stopping_stops_and_keeps_the_best_checkpoint(tmp_path: Path) -> None:
    path = resumable_recipe(tmp_path)
    training = "training: {max_steps: 40, batch_size: 4, eval_steps: 1, logging_steps: 1, learning_rate: 0.5, early_stopping: {patience: 1, metric: loss, min_rows: 1}}"
    path.write_text(path.read_text().split("training:")[0] + training + "\noutput: {dir: run}\n")
    result = invoke("finetune", path, "--json")
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["steps"] < 40
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    during = [r["eval_loss"] for r in logged if "eval_loss" in r and r["step"] <= summary["steps"]]
    assert summary["validation"]["eval_loss"] == pytest.approx(min(during))


@pytest.mark.slow
def test_merged_export_predicts_what_the_adapter_predicts(tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert invoke("finetune", recipe(tmp_path, "classification", "lora")).code == 0
    merged_dir = tmp_path / "merged"
    assert invoke("export", tmp_path / "run", "--merge", "--output", merged_dir).code == 0
    assert not (merged_dir / "adapter_config.json").exists()
    model_dir = tmp_path / "run" / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(["the cat is good", "the dog is bad"], return_tensors="pt", padding=True)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir / "base")
    adapter = PeftModel.from_pretrained(base, model_dir).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        expected, got = adapter(**batch).logits, merged(**batch).logits
    torch.testing.assert_close(got, expected)
    assert merged.config.id2label == {0: "neg", 1: "pos"}

    copied = tmp_path / "copied"
    assert invoke("export", tmp_path / "run", "--output", copied, "--no-merge").code == 0
    assert (copied / "adapter_config.json").exists() and (copied / "base" / "config.json").exists()
    foreign = tmp_path / "foreign"
    write(foreign / "notes.txt", "mine")
    assert_bad_input(invoke("export", tmp_path / "run", "--output", foreign), "is not an llmtune export")
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1


@pytest.mark.slow
def test_merge_adapter_in_the_recipe_writes_a_standalone_causal_lm(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    sft_data(tmp_path)
    path = recipe(tmp_path, "causal_lm", "lora", "export: {merge_adapter: true}")
    assert invoke("finetune", path, "--set", "seed=7").code == 0
    model_dir = tmp_path / "run" / "model"
    assert not (model_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    # the merge added LoRA's rank-4 update B @ A to every targeted weight, and changed nothing else
    initial = initial_weights("causal_lm", seed=7)
    moved = {k for k in initial if not torch.equal(merged[k], initial[k])}
    assert moved and all(k.endswith("_proj.weight") for k in moved), moved
    for key in moved:
        assert torch.linalg.matrix_rank(merged[key] - initial[key]).item() <= 4, key


def test_export_refuses_what_cannot_be_merged(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "adapter" / "adapter_config.json", json.dumps({"peft_type": "PREFIX_TUNING"})
    ).parent
    assert_bad_input(invoke("export", folder, "--merge", "--output", tmp_path / "out"), "cannot be merged")
    assert_bad_input(invoke("export", tmp_path / "nothing", "--output", tmp_path / "out"), "neither a run")
    assert not (tmp_path / "out").exists()


def test_precision_auto_is_bf16_on_capable_gpus_and_fp32_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from llmtune.errors import BadInput
    from llmtune.recipes.common import Training
    from llmtune.runs.training import resolve_precision

    assert resolve_precision(Training(precision="auto"), "cpu") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(Training(precision="auto"), "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(Training(precision="auto"), "cuda") == "fp32"
    with pytest.raises(BadInput, match="fp16 needs a CUDA GPU"):
        resolve_precision(Training(precision="fp16"), "cpu")


@pytest.mark.slow
def test_tensorboard_receives_loss_and_eval_metrics(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = recipe(
        tmp_path, "classification", "lora", training=f"{TRAINING}, eval_steps: 1, report_to: [tensorboard]"
    )
    write(path, path.read_text().replace("max_length: 32}", "max_length: 32, split: {validation: 0.25}}"))
    assert invoke("finetune", path).code == 0
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no event file in <run>/tensorboard"
    board = EventAccumulator(str(events[0].parent))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"train/loss", "eval/loss", "eval/accuracy"} <= tags, tags
    assert [e.step for e in board.Scalars("train/loss")] == [1, 2]


def test_a_tracker_that_is_not_installed_is_bad_input(tmp_path: Path) -> None:
    path = recipe(tmp_path, "classification", "lora", training=f"{TRAINING}, report_to: [wandb]")
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    assert_bad_input(run_cli("finetune", path), "training.report_to", "pip install wandb")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_run_that_cannot_mean_much_says_so(tmp_path: Path) -> None:
    """Two steps at a tiny learning rate on 12 test rows: few steps, one class predicted, and a
    test split too small for its accuracy — each warned about in the summary, report and log."""
    path = recipe(
        tmp_path, "classification", "full", training="max_steps: 2, batch_size: 8, learning_rate: 1.0e-9"
    )
    result = invoke("finetune", path, "--json")
    assert result.code == 0, result.stderr[-3000:]
    warnings = result.json()["warnings"]
    assert any("only 2 optimizer steps" in w for w in warnings), warnings
    assert any("95% Wilson interval" in w for w in warnings), warnings
    assert any("for every test row" in w for w in warnings), warnings
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Warnings" in report and "only 2 optimizer steps" in report
    assert "warning: only 2 optimizer steps" in result.stderr
    low, high = json.loads((tmp_path / "run" / "eval.json").read_text())["metrics"]["accuracy_ci95"]
    assert 0.0 <= low < high <= 1.0 and high - low > 0.2


def test_dry_run_counts_parameters_without_reading_weights(tmp_path: Path) -> None:
    """--dry-run builds the model on the meta device: the counts are the real model's (MiniLM +
    LoRA r=8 + a 2-label head, as a real run prints them), and nothing is written."""
    result = run_cli(
        "finetune", ROOT / "recipes" / "quickstart.yaml", "--dry-run", "--json", "--output", tmp_path / "run"
    )
    assert result.code == 0, result.stderr[-2000:]
    plan = result.json()
    assert (plan["trainable_params"], plan["total_params"]) == (338_690, 23_052_676)
    assert plan["learning_rate"] == 2.0e-3 and plan["epochs"] == 6  # the recipe's own numbers win over auto
    assert not (tmp_path / "run").exists()
