"""Adapter layers (`method.type: adapter`): bottlenecks added to every block of bert, llama and
gpt2 leave the model unchanged until they train, are the only weights (with the task head) that
change, learn serial and parallel, and a trained run loads again: in bulk-infer, prompt-eval, a
Python one-liner after `llmtune export`, and after --resume. Export refuses to merge them."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_bad_input, invoke, read_jsonl, run_cli, start_cli, write, write_jsonl

from llmtune.errors import BadInput

PLACEMENTS = {
    "pfeiffer": {"placement": "serial", "sites": ["feed_forward"]},
    "houlsby": {"placement": "serial", "sites": ["attention", "feed_forward"]},
    "parallel": {"placement": "parallel", "sites": ["feed_forward"]},
}
WORDS = ["cat", "dog", "sun", "red", "blue", "tree", "fish", "bird"]


def scratch_model(architecture: str) -> tuple[torch.nn.Module, object, str]:
    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    torch.manual_seed(0)
    spec = ScratchModel(architecture=architecture, hidden_size=32, num_layers=2, num_heads=2)
    tokenizer = build_tokenizer(spec, [])
    head = "classification" if architecture == "bert" else "causal_lm"
    labels = ["neg", "pos"] if head == "classification" else None
    return build_scratch_model(spec, tokenizer, head=head, labels=labels), tokenizer, head


def minilm() -> tuple[torch.nn.Module, object, str]:
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    path = snapshot_download("sentence-transformers/all-MiniLM-L6-v2", local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    return model, AutoTokenizer.from_pretrained(path), "classification"


def adapter_method(placement: str, **extra: object):  # noqa: ANN201 - a MethodSpec
    from llmtune.recipes.methods import MethodSpec

    return MethodSpec(type="adapter", reduction_factor=4, **PLACEMENTS[placement], **extra)


def batch(tokenizer: object, head: str) -> dict[str, torch.Tensor]:
    texts = [f"the {w} is {'good' if i % 2 else 'bad'}" for i, w in enumerate(WORDS)]
    encoded = dict(tokenizer(texts, return_tensors="pt", padding=True))  # type: ignore[operator]
    if head == "classification":
        encoded["labels"] = torch.tensor([i % 2 for i in range(len(texts))])
    else:
        encoded["labels"] = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    return encoded


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("architecture", ["bert", "llama", "gpt2"])
def test_zero_initialised_up_projection_leaves_the_outputs_unchanged(
    architecture: str, placement: str
) -> None:
    from llmtune.models.bottlenecks import adapter_sets
    from llmtune.models.methods import apply_method

    model, tokenizer, head = scratch_model(architecture)
    model.eval()
    inputs = {k: v for k, v in batch(tokenizer, head).items() if k != "labels"}
    with torch.no_grad():
        before = model(**inputs).logits
        adapted = apply_method(model, adapter_method(placement), head)
        after = adapted(**inputs).logits
    sites = adapter_sets(adapted)[0].sites
    assert len(sites) == 2 * (2 if placement == "houlsby" else 1)  # every block, every site
    assert torch.equal(before, after)
    # and the adapters are really in the forward pass: a non-zero up-projection changes the output
    with torch.no_grad():
        for site in sites.values():
            site.bottleneck.up.weight.normal_()  # (a constant would vanish in a LayerNorm)
        assert not torch.allclose(adapted(**inputs).logits, before)


@pytest.mark.parametrize("placement", ["houlsby", "parallel"])
@pytest.mark.parametrize("architecture", ["bert", "llama", "gpt2"])
def test_only_the_adapters_and_the_head_train_and_they_learn(architecture: str, placement: str) -> None:
    from llmtune.models.bottlenecks import ROOT
    from llmtune.models.methods import apply_method

    # a random scratch bert's [CLS] carries too little of the text to learn from in a few steps:
    # the real pre-trained MiniLM (a bert) from the offline cache instead
    model, tokenizer, head = minilm() if architecture == "bert" else scratch_model(architecture)
    model = apply_method(model, adapter_method(placement), head)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    head_names = ("classifier.",) if head == "classification" else ()
    assert trainable and all(n.startswith((ROOT, *head_names)) for n in trainable), trainable
    inputs = batch(tokenizer, head)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.eval()  # no dropout: the loss on one batch must fall steadily
    losses = []
    for _ in range(12):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith((ROOT, *head_names)) for k in changed), sorted(changed)
    assert any(k.startswith(ROOT) and k.endswith("up.weight") for k in changed)
    assert losses[-1] < losses[0] - 0.1, losses


def test_an_architecture_without_known_blocks_is_refused_by_name() -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    from llmtune.models.methods import apply_method

    model = T5ForConditionalGeneration(
        T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=50)
    )
    with pytest.raises(BadInput, match="t5"):
        apply_method(model, adapter_method("pfeiffer"), "causal_lm")


def test_parallel_adapters_at_the_attention_are_refused(tmp_path: Path) -> None:
    recipe = cls_recipe(tmp_path, "method: {type: adapter, placement: parallel, sites: [attention]}")
    assert_bad_input(invoke("validate", recipe), "placement: parallel", "method")


# ---------------------------------------------------------------- end to end, through the CLI
def cls_recipe(folder: Path, method: str, training: str = "max_steps: 8", extra: str = "") -> Path:
    rows = [
        {
            "id": f"r{i}",
            "text": f"the {w} is {'good' if i % 2 else 'bad'}",
            "label": "pos" if i % 2 else "neg",
        }
        for i, w in enumerate(WORDS * 4)
    ]
    write_jsonl(folder / "train.jsonl", rows[:24])
    write_jsonl(folder / "test.jsonl", rows[24:])
    return write(
        folder / "cls.yaml",
        f"""kind: finetune
task: classification
model: {{scratch: {{architecture: bert, hidden_size: 32, num_layers: 2, num_heads: 2}}}}
{method}
data: {{train: train.jsonl, test: test.jsonl, max_length: 32}}
training: {{{training}, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1}}
output: {{dir: run}}
{extra}""",
    )


def sft_recipe(folder: Path, method: str, name: str = "sft.yaml", model: str = "") -> Path:
    rows = [{"prompt": f"Echo: {w}\nAnswer:", "completion": f" {w}"} for w in WORDS * 3]
    write_jsonl(folder / "sft_train.jsonl", rows[:16])
    write_jsonl(folder / "sft_test.jsonl", rows[16:])
    model = model or "{scratch: {architecture: llama, hidden_size: 32, num_layers: 2, num_heads: 2}}"
    return write(
        folder / name,
        f"""kind: finetune
task: causal_lm
model: {model}
{method}
data: {{train: sft_train.jsonl, test: sft_test.jsonl, max_length: 32}}
evaluation: {{max_new_tokens: 4}}
training: {{max_steps: 10, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1}}
output: {{dir: {Path(name).stem}}}
""",
    )


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]


@pytest.mark.slow
def test_a_classification_run_saves_adapters_that_load_again_and_export_refuses_to_merge(
    tmp_path: Path,
) -> None:
    from safetensors.torch import load_file

    from llmtune.models.adapters import load_adapter_folder

    recipe = cls_recipe(
        tmp_path, "method: {type: adapter, reduction_factor: 4, sites: [attention, feed_forward]}"
    )
    result = invoke("finetune", recipe, "--json")
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert 0 < summary["trainable_share"] < 0.2
    model = tmp_path / "run" / "model"
    config = json.loads((model / "adapter_layers.json").read_text())
    assert config["adapters"][0]["sites"] == ["attention", "feed_forward"]
    assert config["base_model_name_or_path"] == str((model / "base").resolve())
    weights = load_file(model / "adapter_layers.safetensors")
    assert any(k.startswith("classifier.") for k in weights) and any("up.weight" in k for k in weights)
    assert not (model / "model.safetensors").exists()  # the base is not copied into model/

    merged = run_cli("export", tmp_path / "run", "--output", tmp_path / "merged", "--merge")
    assert_bad_input(merged, "adapter layers", "cannot be merged", "load_adapter_folder")
    assert not (tmp_path / "merged").exists()
    exported = run_cli("export", tmp_path / "run", "--output", tmp_path / "out")
    assert exported.code == 0, exported.stderr
    assert "cannot be merged" in exported.stderr and "model.path" in exported.stderr
    # the exported folder, loaded in Python, predicts what the run predicted
    loaded, tokenizer = load_adapter_folder(tmp_path / "out")
    predictions = read_jsonl(tmp_path / "run" / "predictions.jsonl")
    with torch.no_grad():
        logits = loaded(
            **tokenizer([p["text"] for p in predictions], return_tensors="pt", padding=True)
        ).logits
    probabilities = torch.softmax(logits, -1)
    expected = torch.tensor([[p["scores"]["neg"], p["scores"]["pos"]] for p in predictions])
    assert torch.allclose(probabilities, expected, atol=1e-5)


def test_bulk_infer_and_prompt_eval_load_an_adapter_run(tmp_path: Path) -> None:
    recipe = cls_recipe(
        tmp_path, "method: {type: adapter, reduction_factor: 4, placement: parallel}", "max_steps: 2"
    )
    assert invoke("finetune", recipe).code == 0
    predictions = {p["id"]: p for p in read_jsonl(tmp_path / "run" / "predictions.jsonl")}
    write_jsonl(tmp_path / "inbox.jsonl", [{"id": i, "text": p["text"]} for i, p in predictions.items()])
    write(
        tmp_path / "bulk.yaml",
        """kind: bulk-infer
model: {path: run/model}
input: {path: inbox.jsonl, id_column: id}
task: classify
labels: [neg, pos]
output: {path: out/labels.jsonl}
""",
    )
    bulk = invoke("bulk-infer", tmp_path / "bulk.yaml")
    assert bulk.code == 0, bulk.stderr[-3000:]
    for row in read_jsonl(tmp_path / "out" / "labels.jsonl"):
        assert row["scores"] == pytest.approx(predictions[row["id"]]["scores"], abs=1e-4)
    write(
        tmp_path / "eval.yaml",
        """kind: prompt-eval
models: {tuned: {path: run/model}}
data: {test: test.jsonl}
labels: [neg, pos]
prompts: {plain: {template: "{{ text }}"}}
output: {dir: eval}
""",
    )
    evaluated = invoke("prompt-eval", tmp_path / "eval.yaml")
    assert evaluated.code == 0, evaluated.stderr[-3000:]
    rows = {p["id"]: p for p in read_jsonl(tmp_path / "eval" / "predictions.jsonl")}
    assert {i: r["prediction"] for i, r in rows.items()} == {
        i: p["prediction"] for i, p in predictions.items()
    }


@pytest.mark.slow
def test_an_sft_run_with_parallel_adapters_learns_and_continues(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    recipe = sft_recipe(tmp_path, "method: {type: adapter, reduction_factor: 4, placement: parallel}")
    assert invoke("finetune", recipe).code == 0
    first = tmp_path / "sft"
    curve = losses(first)
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 0.1, curve

    # a later run continues the same adapter layers (stack: false), then stacks new ones on them
    model = "{path: sft/model}"
    again = sft_recipe(tmp_path, "method: {type: adapter, placement: parallel}", "again.yaml", model)
    assert invoke("finetune", again).code == 0
    weights = load_file(tmp_path / "again" / "model" / "adapter_layers.safetensors")
    earlier = load_file(first / "model" / "adapter_layers.safetensors")
    assert weights.keys() == earlier.keys() and any(not torch.equal(weights[k], earlier[k]) for k in weights)
    lineage = json.loads((tmp_path / "again" / "manifest.json").read_text())["lineage"]
    assert [step["name"] for step in lineage] == ["sft"] and lineage[0]["method"] == "adapter"

    stacked = sft_recipe(
        tmp_path, "method: {type: adapter, stack: true}", "stacked.yaml", "{path: again/model}"
    )
    assert invoke("finetune", stacked).code == 0
    config = json.loads((tmp_path / "stacked" / "model" / "adapter_layers.json").read_text())
    assert [a["placement"] for a in config["adapters"]] == ["parallel", "serial"]
    top = load_file(tmp_path / "stacked" / "model" / "adapter_layers.safetensors")
    assert all(torch.equal(top[k], weights[k]) for k in weights)  # the earlier set stayed frozen
    lineage = json.loads((tmp_path / "stacked" / "manifest.json").read_text())["lineage"]
    assert [step["name"] for step in lineage] == ["sft", "again"]

    lora = sft_recipe(tmp_path, "method: {type: lora, r: 4}", "lora.yaml", "{path: sft/model}")
    assert_bad_input(run_cli("finetune", lora), "adapter layers", "cannot be merged", "method.type")
    assert not (tmp_path / "lora").exists()


def _steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    return max((json.loads(line)["step"] for line in path.read_text().splitlines() if line), default=0)


@pytest.mark.slow
def test_sigterm_and_resume_end_where_an_uninterrupted_adapter_run_ends(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    method = "method: {type: adapter, reduction_factor: 4}"
    recipe = cls_recipe(tmp_path, method, "max_steps: 24, eval_steps: 2", "seed: 7")
    assert invoke("finetune", recipe, "--output", tmp_path / "straight").code == 0
    run = tmp_path / "interrupted"
    proc = start_cli(
        "finetune",
        str(recipe),
        "--output",
        str(run),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while _steps_logged(run) < 4 and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate()
    assert proc.returncode == 143, stderr[-3000:]
    resumed = run_cli("finetune", recipe, "--output", run, "--resume")
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    a = load_file(run / "model" / "adapter_layers.safetensors")
    b = load_file(tmp_path / "straight" / "model" / "adapter_layers.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "eval.json").read_text()) == json.loads(
        (tmp_path / "straight" / "eval.json").read_text()
    )
