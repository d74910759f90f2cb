"""Every tuning method on both tasks, end to end on a tiny scratch llama: the run prints trainable
vs total parameters and writes a model/ that plain transformers + peft load.

The matrix runs the CLI in this process (typer's runner): same code path as `llmtune finetune`,
without paying torch's import once per run. Exit codes and signals are tested by subprocess in
test_finetune_training.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    TRAINING,
    assert_bad_input,
    initial_weights,
    invoke,
    read_jsonl,
    recipe,
    write_jsonl,
)

METHODS = ["full", "lora", "dora", "ia3", "prefix", "prompt", "last_layers"]


def load_saved(model_dir: Path, task: str):
    """Load model/ the way a user without llmtune would."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    if not (model_dir / "adapter_config.json").exists():
        return cls.from_pretrained(model_dir)
    from peft import PeftModel

    return PeftModel.from_pretrained(cls.from_pretrained(model_dir / "base"), model_dir)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "causal_lm"])
@pytest.mark.parametrize("method", METHODS)
def test_method_trains_and_saves_a_loadable_model(tmp_path: Path, task: str, method: str) -> None:
    training = TRAINING
    if method == "lora" and task == "causal_lm":
        training += ", gradient_checkpointing: true"
    init = ", init_text: the cat" if method == "prompt" else ""
    result = invoke("finetune", recipe(tmp_path, task, method, "seed: 7", training, init), "--json")
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert (
        f"{method}: training {summary['trainable_params']:,} of {summary['total_params']:,}" in result.stderr
    )
    if method == "full":
        assert summary["trainable_params"] == summary["total_params"]
    else:
        assert 0 < summary["trainable_params"] < summary["total_params"]
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert summary["steps"] == 2
    metrics = json.loads((run / "eval.json").read_text())["metrics"]
    assert ("f1" if task == "classification" else "perplexity") in metrics
    model = load_saved(run / "model", task)
    if task == "classification":
        assert model.config.id2label == {0: "neg", 1: "pos"}
    if method in ("prefix", "prompt"):
        check_only_virtual_tokens_trained(run / "model", task, method, seed=7)
    if method in ("full", "last_layers", "dora", "ia3"):
        check_the_trained_weights_moved(run / "model", task, method, seed=7)
    if method == "lora" and task == "causal_lm":  # with gradient checkpointing: every block still learns
        from safetensors.torch import load_file

        adapter = load_file(run / "model" / "adapter_model.safetensors")
        assert all(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)


def check_the_trained_weights_moved(model_dir: Path, task: str, method: str, seed: int) -> None:
    """What the method trains moved away from its init, and nothing else did: every tensor
    (full); the last block, final norm and head but not the first block (last_layers, layers: 1);
    every DoRA / IA3 tensor, over an untouched base (dora, ia3)."""
    import torch
    from safetensors.torch import load_file

    fresh = initial_weights(task, seed)
    if method in ("full", "last_layers"):
        saved = load_file(model_dir / "model.safetensors")
        assert set(saved) <= set(fresh)
        moved = {k for k in saved if not torch.equal(saved[k], fresh[k])}
        if method == "full":
            assert moved == set(saved), set(saved) - moved
            return
        last = {k for k in saved if k.startswith("model.layers.1.")}
        assert last and last | {"model.norm.weight"} <= moved, (last | {"model.norm.weight"}) - moved
        assert not {k for k in moved if k.startswith("model.layers.0.")}, moved
        head = "score.weight" if task == "classification" else "model.embed_tokens.weight"  # tied to lm_head
        assert head in moved
        return
    base = load_file(model_dir / "base" / "model.safetensors")
    assert all(torch.equal(base[k], fresh[k]) for k in base)
    adapter = load_file(model_dir / "adapter_model.safetensors")
    if method == "ia3":  # scaling vectors start at 1
        vectors = [v for k, v in adapter.items() if "ia3_l" in k]
        assert len(vectors) == 14 and all(not torch.equal(v, torch.ones_like(v)) for v in vectors)
        return
    # dora: B starts at 0, the magnitude at the base weight's row norms
    assert [k for k in adapter if "lora_B" in k] and all(
        v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k
    )
    magnitudes = {k: v for k, v in adapter.items() if "lora_magnitude_vector" in k}
    assert len(magnitudes) == 14
    for key, magnitude in magnitudes.items():
        weight = base[key.removeprefix("base_model.model.").replace("lora_magnitude_vector", "weight")]
        assert not torch.allclose(magnitude, weight.norm(dim=1)), key


def check_only_virtual_tokens_trained(model_dir: Path, task: str, method: str, seed: int) -> None:
    """The saved base is the untouched random init (rebuilt here from the same seed), and the
    adapter holds the virtual tokens (plus, for classification, the new head) and nothing else."""
    import torch
    from safetensors.torch import load_file

    fresh = initial_weights(task, seed)
    saved = load_file(model_dir / "base" / "model.safetensors")
    assert set(saved) <= set(fresh)
    assert all(torch.equal(saved[k], fresh[k]) for k in saved)
    adapter = load_file(model_dir / "adapter_model.safetensors")
    virtual = [k for k in adapter if "prompt_embeddings" in k or "prefix" in k]
    assert virtual, list(adapter)
    others = [k for k in adapter if k not in virtual]
    assert all("score" in k for k in others), others
    assert (task == "classification") == bool(others)
    if method == "prompt":
        # trained (moved) from the embeddings of init_text's tokens, not from a random init
        trained = adapter[virtual[0]]
        vocab = saved["model.embed_tokens.weight"]
        nearest = torch.cdist(trained, vocab).min(dim=1).values
        assert 0 < nearest.max() < 0.1, nearest


def test_qlora_on_cpu_is_a_clear_bad_input(tmp_path: Path) -> None:
    result = invoke("finetune", recipe(tmp_path, "causal_lm", "qlora"), "--set", "model.device=cpu")
    assert_bad_input(result, "method.type", "qlora needs a CUDA GPU")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("method", "training", "fragments"),
    [
        ("lora", "packing: true", ["packing is for task: causal_lm"]),
        ("prefix", "max_steps: 2", ["no adapter to merge"]),
        ("lora", "early_stopping: {patience: 1}", ["early_stopping needs validation rows"]),
        ("lora", "early_stopping: {metric: bleu}", ["validation metric 'eval_bleu' is not computed"]),
    ],
)
def test_inconsistent_recipes_are_refused(
    tmp_path: Path, method: str, training: str, fragments: list[str]
) -> None:
    extra = "export: {merge_adapter: true}" if method == "prefix" else ""
    path = recipe(tmp_path, "classification", method, extra, training=training)
    if "metric" in training:
        path.write_text(
            path.read_text().replace("max_length: 32}", "max_length: 32, split: {validation: 0.25}}")
        )
    result = invoke("finetune", path)
    assert_bad_input(result, *fragments)


def test_a_shipped_recipe_shows_every_method() -> None:
    """Each tuning method has a recipe in recipes/ (they all validate: test_cli.py)."""
    from llmtune.recipes import load_recipe

    methods = {load_recipe(p, None).method.type for p in (ROOT / "recipes").glob("finetune-*.yaml")}
    assert methods >= {"full", "lora", "qlora", "dora", "ia3", "prefix", "prompt", "last_layers", "adapter"}


@pytest.mark.parametrize("task", ["classification", "regression", "causal_lm"])
def test_the_method_reaches_model_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str) -> None:
    """qlora's 4-bit loading is decided from the method (tests/test_model_errors.py pins the
    from_pretrained arguments); here: every finetune job hands its method and the dry run over."""
    import llmtune.jobs.finetune.heads as heads
    import llmtune.jobs.finetune.sft as sft

    module = sft if task == "causal_lm" else heads  # both head tasks load through heads.prepare
    seen: dict = {}
    real = module.load_model

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "load_model", spy)
    if task == "regression":  # the classification recipe, with a number for each row's label
        path = recipe(tmp_path, "classification", "dora", extra="label_range: [0, 1]\n")
        for name in ("cls_train.jsonl", "cls_test.jsonl"):
            rows = read_jsonl(tmp_path / name)
            write_jsonl(tmp_path / name, [{**r, "label": float(i % 2)} for i, r in enumerate(rows)])
        path.write_text(path.read_text().replace("task: classification", "task: regression"))
    else:
        path = recipe(tmp_path, task, "dora")
    assert invoke("finetune", path, "--dry-run").code == 0
    assert seen["method"] == "dora" and seen["empty_weights"] is True
