"""Sequential fine-tuning: `model.path: <earlier run>/model` continues that run — the same LoRA
adapter trained further (`method.stack: false`), a new one stacked on it merged into the base
(`stack: true`), or a full model trained again — and the manifest records the lineage. A method
that cannot continue the earlier adapter is refused (exit 2) before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_bad_input, invoke, read_jsonl, write, write_jsonl

WORDS = ["cat", "dog", "sun", "red", "blue", "tree", "fish", "bird"]
SCRATCH = "{scratch: {architecture: llama, hidden_size: 32, num_layers: 2, num_heads: 2}}"


def sft_recipe(folder: Path, name: str, method: str, model: str = SCRATCH) -> Path:
    rows = [{"prompt": f"Echo: {w}\nAnswer:", "completion": f" {w}"} for w in WORDS * 3]
    write_jsonl(folder / "train.jsonl", rows[:16])
    write_jsonl(folder / "test.jsonl", rows[16:])
    return write(
        folder / f"{name}.yaml",
        f"""kind: finetune
task: causal_lm
model: {model}
method: {method}
data: {{train: train.jsonl, test: test.jsonl, max_length: 32}}
evaluation: {{metrics: [perplexity]}}
training: {{max_steps: 4, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1}}
output: {{dir: {name}}}
""",
    )


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def adapter_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def first_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The earlier LoRA run both LoRA tests continue, trained once: each test copies it."""
    folder = tmp_path_factory.mktemp("first-lora")
    result = invoke("finetune", sft_recipe(folder, "first", "{type: lora, r: 4}"))
    assert result.code == 0, result.stderr[-3000:]
    return folder / "first"


@pytest.mark.slow
def test_a_lora_run_is_continued_then_stacked_and_the_lineage_is_recorded(
    tmp_path: Path, first_lora: Path
) -> None:
    shutil.copytree(first_lora, tmp_path / "first")

    # stack: false trains the same adapter further: same keys, new values, lineage [first]
    second = sft_recipe(tmp_path, "second", "{type: lora, r: 4}", "{path: first/model}")
    result = invoke("finetune", second)
    assert result.code == 0, result.stderr[-3000:]
    assert "continuing the earlier run's LORA adapter" in result.stderr
    before, after = adapter_weights(tmp_path / "first"), adapter_weights(tmp_path / "second")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    lineage = manifest(tmp_path / "second")["lineage"]
    assert len(lineage) == 1
    assert lineage[0]["run_dir"] == str((tmp_path / "first").resolve())
    assert lineage[0]["name"] == "first" and lineage[0]["method"] == "lora"
    assert lineage[0]["finished"] == manifest(tmp_path / "first")["ended"]
    # it starts where the first run ended: its test loss before training is the first's after
    first_eval = json.loads((tmp_path / "first" / "eval.json").read_text())["metrics"]
    second_eval = json.loads((tmp_path / "second" / "eval.json").read_text())
    assert abs(second_eval["before_training"]["loss"] - first_eval["loss"]) < 1e-4

    # stack: true merges it into the base (saved in model/base) and trains a new adapter on top
    third = sft_recipe(tmp_path, "third", "{type: lora, r: 2, stack: true}", "{path: second/model}")
    result = invoke("finetune", third)
    assert result.code == 0, result.stderr[-3000:]
    model = tmp_path / "third" / "model"
    config = json.loads((model / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["base_model_name_or_path"] == str((model / "base").resolve())
    assert (model / "base" / "model.safetensors").exists()
    third_eval = json.loads((tmp_path / "third" / "eval.json").read_text())
    second_loss = json.loads((tmp_path / "second" / "eval.json").read_text())["metrics"]["loss"]
    assert abs(third_eval["before_training"]["loss"] - second_loss) < 1e-4  # the merge kept the model
    assert [s["name"] for s in manifest(tmp_path / "third")["lineage"]] == ["first", "second"]


@pytest.mark.slow
def test_a_method_that_cannot_continue_the_earlier_adapter_is_refused(
    tmp_path: Path, first_lora: Path
) -> None:
    shutil.copytree(first_lora, tmp_path / "first")
    ia3 = sft_recipe(tmp_path, "ia3", "{type: ia3}", "{path: first/model}")
    assert_bad_input(
        invoke("finetune", ia3), "earlier run's LORA adapter", "method.stack: true", "method.type"
    )
    assert not (tmp_path / "ia3").exists()
    # stacking needs an earlier adapter: on a plain model there is nothing to stack on
    plain = sft_recipe(tmp_path, "plain", "{type: lora, stack: true}")
    assert_bad_input(invoke("finetune", plain), "method.stack")
    assert not (tmp_path / "plain").exists()


@pytest.mark.slow
def test_a_full_model_run_is_continued(tmp_path: Path) -> None:
    first = sft_recipe(tmp_path, "first", "{type: full}")
    assert invoke("finetune", first).code == 0
    second = sft_recipe(tmp_path, "second", "{type: full}", "{path: first/model}")
    result = invoke("finetune", second)
    assert result.code == 0, result.stderr[-3000:]
    first_loss = json.loads((tmp_path / "first" / "eval.json").read_text())["metrics"]["loss"]
    second_eval = json.loads((tmp_path / "second" / "eval.json").read_text())
    assert abs(second_eval["before_training"]["loss"] - first_loss) < 1e-4
    assert second_eval["metrics"]["loss"] < first_loss
    lineage = manifest(tmp_path / "second")["lineage"]
    assert [(s["name"], s["method"]) for s in lineage] == [("first", "full")]
    assert read_jsonl(tmp_path / "second" / "metrics.jsonl")
