"""Wrong models give clear errors, never wrong answers: broken model folders (no tokenizer, torn
weights, bad configs, custom code, bad adapters) are exit 2 naming the file and what is wrong,
from every job, with nothing written. Also the from_pretrained arguments a qlora recipe produces
(4-bit NF4), dry runs on empty (meta) weights, and the one rule for heads and label names.

Broken folders are copies of tiny scratch models saved once per module with save_pretrained. Most
runs use the CLI in this process (typer's runner: same verbs and exit codes, no torch import per
run); a few run `python -m llmtune` to show that no traceback reaches the user.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import Result, assert_bad_input, run_cli, write, write_jsonl
from typer.testing import CliRunner

from llmtune.cli import app

ROOT = Path(__file__).resolve().parent.parent
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2}


def llmtune(*args: str | Path) -> Result:
    """The CLI in this process."""
    out = CliRunner().invoke(app, [str(a) for a in args])
    return Result(out.exit_code, out.stdout, out.stderr)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lm/ (a llama causal LM), cls/ (a bert classifier: neg, pos) and adapter/ (LoRA on cls/)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import set_seed

    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    folder = tmp_path_factory.mktemp("models")
    set_seed(0)
    torch.set_num_threads(1)
    for name, architecture, head, labels in (
        ("lm", "llama", "causal_lm", None),
        ("cls", "bert", "classification", ["neg", "pos"]),
    ):
        spec = ScratchModel(architecture=architecture, **TINY)
        tokenizer = build_tokenizer(spec, [])
        model = build_scratch_model(spec, tokenizer, head=head, labels=labels)
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query", "value"])
    get_peft_model(model, config).save_pretrained(folder / "adapter")
    edit_json(folder / "adapter" / "adapter_config.json", base_model_name_or_path=str(folder / "cls"))
    return folder


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def broken(saved: Path, tmp_path: Path, source: str, damage: Callable[[Path], None]) -> Path:
    """A copy of saved/`source` in tmp_path/model, damaged."""
    model = tmp_path / "model"
    shutil.copytree(saved / source, model)
    damage(model)
    return model


def truncate(path: Path, size: int) -> None:
    with path.open("r+b") as f:
        f.truncate(size)


def bulk_recipe(folder: Path, model: Path, classify: bool) -> Path:
    write_jsonl(folder / "in.jsonl", [{"id": "a", "text": "good"}, {"id": "b", "text": "bad"}])
    task = (
        {"task": "classify", "labels": ["neg", "pos"]} if classify else {"generation": {"max_new_tokens": 2}}
    )
    recipe = {
        "kind": "bulk-infer",
        "model": {"path": str(model)},
        "input": {"path": "in.jsonl", "id_column": "id"},
        "template": "{{ text }}",
        "output": {"path": "out/res.jsonl"},
        **task,
    }
    return write(folder / "bulk.yaml", yaml.safe_dump(recipe))


def eval_recipe(folder: Path, model: Path) -> Path:
    write_jsonl(folder / "test.jsonl", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}])
    recipe = {
        "kind": "prompt-eval",
        "models": {"m": {"path": str(model)}},
        "data": {"test": "test.jsonl"},
        "labels": ["neg", "pos"],
        "prompts": {"zero": {"template": "{{ text }}:"}},
        "output": {"dir": "out"},
    }
    return write(folder / "eval.yaml", yaml.safe_dump(recipe))


def finetune_recipe(folder: Path, model: Path) -> Path:
    rows = [{"text": f"t{i}", "label": "pos" if i % 2 else "neg"} for i in range(8)]
    write_jsonl(folder / "train.jsonl", rows)
    recipe = {
        "kind": "finetune",
        "task": "classification",
        "model": {"path": str(model)},
        "method": {"type": "lora", "r": 2},
        "data": {"train": "train.jsonl"},
        "training": {"max_steps": 2, "batch_size": 4},
        "output": {"dir": "out"},
    }
    return write(folder / "ft.yaml", yaml.safe_dump(recipe))


def shard(model: Path) -> None:
    """model.safetensors becomes a two-file sharded checkpoint whose second shard is missing."""
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    keys = json.loads(_header(model / "model-00001-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in keys if k != "__metadata__"}
    weight_map["classifier.weight"] = "model-00002-of-00002.safetensors"
    write(model / "model.safetensors.index.json", json.dumps({"metadata": {}, "weight_map": weight_map}))


def _header(path: Path) -> str:
    raw = path.read_bytes()
    return raw[8 : 8 + int.from_bytes(raw[:8], "little")].decode()


def torch_bin_torn(model: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    truncate(model / "pytorch_model.bin", (model / "pytorch_model.bin").stat().st_size // 2)


def remove(*names: str) -> Callable[[Path], None]:
    return lambda model: [(model / n).unlink() for n in names] and None


# (source folder, damage, the file the message names, what it says)
CASES = {
    "no tokenizer files": ("cls", remove("tokenizer.json", "tokenizer_config.json"), "", "no tokenizer here"),
    "tokenizer config without a vocabulary": ("cls", remove("tokenizer.json"), "", "no tokenizer here"),
    "truncated header": (
        "cls",
        lambda m: truncate(m / "model.safetensors", 1000),
        "model.safetensors",
        "truncated or corrupt weights file",
    ),
    "truncated tensors": (
        "cls",
        lambda m: truncate(m / "model.safetensors", (m / "model.safetensors").stat().st_size - 100),
        "model.safetensors",
        "truncated or corrupt weights file",
    ),
    "no weights": (
        "cls",
        remove("model.safetensors"),
        "",
        "no weights file here (expected model.safetensors",
    ),
    "missing shard": ("cls", shard, "model-00002-of-00002.safetensors", "weights file missing"),
    "torn torch archive": ("cls", torch_bin_torn, "pytorch_model.bin", "an incomplete zip archive"),
    "no config.json": ("cls", remove("config.json"), "config.json", "config.json missing"),
    "config.json not JSON": (
        "cls",
        lambda m: write(m / "config.json", '{"model_type": "bert",\n  oops}'),
        "config.json:2",
        "invalid JSON",
    ),
    "generation_config.json not JSON": (
        "lm",
        lambda m: write(m / "generation_config.json", "{oops"),
        "generation_config.json:1",
        "invalid JSON",
    ),
    "tokenizer.json not JSON": (
        "lm",
        lambda m: write(m / "tokenizer.json", '{"version": '),
        "",
        "cannot load the tokenizer",
    ),
    "id2label not integers": (
        "cls",
        lambda m: edit_json(m / "config.json", id2label={"neg": "neg", "pos": "pos"}),
        "config.json",
        "id2label keys must be the integers 0..n-1, got ['neg', 'pos']",
    ),
    "id2label with a gap": (
        "cls",
        lambda m: edit_json(m / "config.json", id2label={"0": "neg", "2": "pos"}),
        "config.json",
        "id2label keys must be the integers 0..n-1, got [0, 2]",
    ),
    "custom model code": (
        "lm",
        lambda m: edit_json(
            m / "config.json",
            model_type="acme-lm",
            auto_map={
                "AutoConfig": "configuration_acme.AcmeConfig",
                "AutoModelForCausalLM": "modeling_acme.Acme",
            },
        ),
        "config.json",
        "model_type 'acme-lm' needs custom code shipped with the model (auto_map); "
        "set model.trust_remote_code: true only if you trust",
    ),
    "custom tokenizer code": (
        "lm",
        lambda m: edit_json(
            m / "tokenizer_config.json",
            tokenizer_class="AcmeTokenizer",
            auto_map={"AutoTokenizer": ["tokenization_acme.AcmeTokenizer", None]},
        ),
        "tokenizer_config.json",
        "set model.trust_remote_code: true only if you trust",
    ),
    "unknown model type": (
        "lm",
        lambda m: edit_json(m / "config.json", model_type="acme-lm"),
        "config.json",
        "model_type 'acme-lm' is not known to transformers",
    ),
    "adapter config not JSON": (
        "adapter",
        lambda m: write(m / "adapter_config.json", '{"peft_type": '),
        "adapter_config.json:1",
        "invalid JSON",
    ),
    "adapter of an unknown type": (
        "adapter",
        lambda m: edit_json(m / "adapter_config.json", peft_type="LORAX"),
        "adapter_config.json",
        "peft_type 'LORAX' is not a peft adapter type",
    ),
    "adapter setting of the wrong type": (
        "adapter",
        lambda m: edit_json(m / "adapter_config.json", r="four"),
        "adapter_config.json",
        "r must be int, got 'four'",
    ),
    "adapter without weights": ("adapter", remove("adapter_model.safetensors"), "", "no weights file here"),
    "adapter weights truncated": (
        "adapter",
        lambda m: truncate(m / "adapter_model.safetensors", 500),
        "adapter_model.safetensors",
        "truncated or corrupt",
    ),
    "adapter base not found": (
        "adapter",
        lambda m: edit_json(m / "adapter_config.json", base_model_name_or_path="/nowhere/base-model"),
        "adapter_config.json",
        "the adapter's base model '/nowhere/base-model' cannot be found",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_model_folder_is_bad_input_naming_the_file(saved: Path, tmp_path: Path, case: str) -> None:
    source, damage, file, fragment = CASES[case]
    model = broken(saved, tmp_path, source, damage)
    result = llmtune("bulk-infer", bulk_recipe(tmp_path, model, classify=source != "lm"))
    assert_bad_input(result, f"{model / file}" if file else f"{model}:", fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("verb", "case"),
    [
        ("prompt-eval", "no tokenizer files"),
        ("prompt-eval", "custom model code"),
        ("prompt-eval", "adapter setting of the wrong type"),
        ("finetune", "no tokenizer files"),
        ("finetune", "truncated tensors"),
        ("finetune", "id2label not integers"),
        ("finetune", "adapter base not found"),
    ],
)
def test_every_job_refuses_broken_models(saved: Path, tmp_path: Path, verb: str, case: str) -> None:
    source, damage, file, fragment = CASES[case]
    model = broken(saved, tmp_path, source, damage)
    if verb == "prompt-eval":
        result = llmtune("prompt-eval", eval_recipe(tmp_path, model))
    else:
        result = llmtune("finetune", finetune_recipe(tmp_path, model), "--dry-run")
    assert_bad_input(result, f"{model / file}" if file else f"{model}:", fragment)
    assert not (tmp_path / "out").exists()


def test_no_traceback_reaches_the_user(saved: Path, tmp_path: Path) -> None:
    """The real process: what used to be a crash log (exit 1) or a wrong answer (exit 0)."""
    model = broken(saved, tmp_path, "cls", CASES["truncated header"][1])
    result = run_cli("bulk-infer", bulk_recipe(tmp_path, model, classify=True))
    assert_bad_input(result, f"{model / 'model.safetensors'}", "truncated")
    model = broken(saved, tmp_path / "b", "cls", CASES["no tokenizer files"][1])
    result = run_cli("finetune", finetune_recipe(tmp_path, model), "--dry-run")
    assert_bad_input(result, str(model), "no tokenizer here")
    assert not (tmp_path / "out").exists()


def test_known_architecture_with_auto_map_loads_with_transformers_code(saved: Path, tmp_path: Path) -> None:
    """Many hub configs keep an auto_map after transformers gained the architecture: those load
    with transformers' own code, as `from_pretrained` does, and need no trust_remote_code."""
    model = broken(
        saved,
        tmp_path,
        "lm",
        lambda m: edit_json(m / "config.json", auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"}),
    )
    result = llmtune("bulk-infer", bulk_recipe(tmp_path, model, classify=False), "--dry-run")
    assert result.code == 0, result.stderr


def test_trusted_custom_code_is_not_refused_up_front(saved: Path, tmp_path: Path) -> None:
    model = broken(saved, tmp_path, "lm", CASES["custom model code"][1])
    recipe = bulk_recipe(tmp_path, model, classify=False)
    result = llmtune("bulk-infer", recipe, "--dry-run", "--set", "model.trust_remote_code=true")
    assert "trust_remote_code" not in result.stderr
    assert result.code == 0, result.stderr


# ---------------------------------------------------------------- qlora: what from_pretrained gets
def test_shipped_qlora_recipe_loads_the_base_in_4bit_nf4(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from llmtune.models.loading import pretrained_kwargs
    from llmtune.recipes import load_recipe

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    recipe = load_recipe(ROOT / "recipes" / "finetune-qlora.yaml")
    kwargs = pretrained_kwargs(recipe.model, "cuda", recipe.method.type)
    config = kwargs.pop("quantization_config")
    assert kwargs == {"dtype": torch.bfloat16, "trust_remote_code": False, "device_map": {"": "cuda:0"}}
    assert (config.load_in_4bit, config.load_in_8bit) == (True, False)
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is True
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bfloat16"), (False, "float16")])
def test_qlora_computes_in_bf16_or_fp16_never_fp32(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: str
) -> None:
    import torch

    from llmtune.models.loading import pretrained_kwargs
    from llmtune.recipes.common import ModelRef

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun: each process loads onto its own GPU
    kwargs = pretrained_kwargs(ModelRef(path="some/model"), "cuda", "qlora")
    assert kwargs["quantization_config"].bnb_4bit_compute_dtype == getattr(torch, expected)
    assert kwargs["dtype"] == getattr(torch, expected)
    assert kwargs["device_map"] == {"": "cuda:3"}


def test_other_methods_load_unquantized_unless_the_recipe_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    from llmtune.models.loading import pretrained_kwargs
    from llmtune.recipes.common import ModelRef

    for method in (None, "lora", "full"):
        assert "quantization_config" not in pretrained_kwargs(ModelRef(path="m"), "cuda", method)
    eight = pretrained_kwargs(ModelRef(path="m", quantization="8bit"), "cuda", "lora")
    assert eight["quantization_config"].load_in_8bit and eight["device_map"] == {"": "cuda:0"}


def test_qlora_never_trains_an_unquantized_base(saved: Path, tmp_path: Path) -> None:
    """peft's k-bit preparation would upcast an unquantized base to fp32: refused, loudly."""
    from transformers import AutoModelForCausalLM

    from llmtune.errors import BadInput
    from llmtune.models.loading import load_model
    from llmtune.models.methods import apply_method
    from llmtune.recipes import load_recipe
    from llmtune.recipes.common import ModelRef, ScratchModel
    from llmtune.recipes.methods import MethodSpec

    with pytest.raises(RuntimeError, match="loaded unquantized"):
        apply_method(
            AutoModelForCausalLM.from_pretrained(saved / "lm"), MethodSpec(type="qlora"), "causal_lm"
        )
    recipe = load_recipe(
        write(tmp_path / "r.yaml", "kind: finetune\nmodel: {path: m}\ndata: {train: t.jsonl}\n")
    )
    scratch = ModelRef(scratch=ScratchModel(architecture="llama", **TINY))
    with pytest.raises(BadInput, match="a scratch model has no pretrained base"):
        load_model(scratch, recipe, head="causal_lm", method="qlora")


# ------------------------------------------------------------------ dry runs on empty weights
@pytest.mark.parametrize("source", ["lm", "cls", "adapter"])
def test_empty_weights_count_the_same_parameters_without_memory(
    saved: Path, tmp_path: Path, source: str
) -> None:
    from llmtune.models.loading import load_model
    from llmtune.recipes import load_recipe
    from llmtune.recipes.common import ModelRef

    recipe = load_recipe(
        write(tmp_path / "r.yaml", "kind: finetune\nmodel: {path: m}\ndata: {train: t.jsonl}\n")
    )
    ref = ModelRef(path=str(saved / source))
    head = "causal_lm" if source == "lm" else "classification"
    labels = None if source == "lm" else ["neg", "pos"]
    real = load_model(ref, recipe, head=head, labels=labels).model
    empty = load_model(ref, recipe, head=head, labels=labels, empty_weights=True).model
    assert all(p.is_meta for p in empty.parameters())
    assert sum(p.numel() for p in empty.parameters()) == sum(p.numel() for p in real.parameters())
    trainable = sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert sum(p.numel() for p in empty.parameters() if p.requires_grad) == trainable


def test_empty_weights_still_check_the_files(saved: Path, tmp_path: Path) -> None:
    from llmtune.errors import BadInput
    from llmtune.models.loading import load_model
    from llmtune.recipes import load_recipe
    from llmtune.recipes.common import ModelRef

    model = broken(saved, tmp_path, "cls", CASES["truncated tensors"][1])
    recipe = load_recipe(
        write(tmp_path / "r.yaml", "kind: finetune\nmodel: {path: m}\ndata: {train: t.jsonl}\n")
    )
    with pytest.raises(BadInput, match="truncated or corrupt"):
        load_model(ModelRef(path=str(model)), recipe, head="classification", empty_weights=True)


# ------------------------------------------------------------------ one rule for heads and labels
def test_one_rule_for_heads_and_label_names() -> None:
    from llmtune.models.info import head_columns, head_of, named_labels

    assert head_of(["BertForSequenceClassification"]) == "classification"
    assert head_of(["LlamaForCausalLM"]) == head_of(["GPT2LMHeadModel"]) == "causal_lm"
    assert head_of(["BertModel"]) is None and head_of([], "SEQ_CLS") == "classification"
    assert named_labels({"0": "LABEL_0", "1": "LABEL_1"}) is None
    assert named_labels({"1": "pos", "0": "neg"}) == ["neg", "pos"]
    assert named_labels({"0": "LABEL_1", "1": "LABEL_0"}) == ["LABEL_1", "LABEL_0"]  # not generic
    assert head_columns(["neg", "pos"], ["pos", "neg"]) == [1, 0]
    assert head_columns(["LABEL_0", "LABEL_1"], ["neg", "pos"]) == [0, 1]
    assert head_columns(["LABEL_0", "LABEL_1"], ["a", "b", "c"]) is None
    assert head_columns(["neg", "pos"], ["bad", "good"]) is None
