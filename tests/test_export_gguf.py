"""`llmtune export --format gguf`: causal LMs (llama, qwen2, gpt2) as f16 / q8_0 GGUF files that
llama.cpp (llama-cpp-python, when installed: `make test-llamacpp`) and transformers'
`from_pretrained(..., gguf_file=...)` load, with the same tokens and the same greedy output as
the trained model; a file with a zeroed tensor fails the parity gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_bad_input, invoke, recipe

from llmtune.export import parity
from llmtune.export.gguf_format import write_gguf
from llmtune.export.runners import TorchRunner, llama_cpp_available

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python is not installed")
PROMPTS = ["Echo: cat\nAnswer:", "Echo: blue\nAnswer:", "héllo wörld, the"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA SFT run on a scratch llama with a byte tokenizer, 2 steps."""
    folder = tmp_path_factory.mktemp("gguf")
    result = invoke("finetune", recipe(folder, "causal_lm", "lora"))
    assert result.code == 0, result.stderr[-3000:]
    return folder / "run"


def tiny(architecture: str, tokenizer_kind: str = "byte") -> tuple[object, object]:
    """(model, tokenizer): a random llama / gpt2 built as scratch runs build them, or a qwen2."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    arch = "llama" if architecture == "qwen2" else architecture
    spec = ScratchModel(architecture=arch, hidden_size=32, num_layers=2, num_heads=2, tokenizer=tokenizer_kind,
                        vocab_size=300, max_position_embeddings=1024)  # fmt: skip
    tokenizer = build_tokenizer(spec, ["the cat is good", "héllo wörld, the dog is bad"] * 20)
    if architecture != "qwen2":
        return build_scratch_model(spec, tokenizer, head="causal_lm", labels=None).eval(), tokenizer
    import torch

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval(), tokenizer


CASES = [("llama", "byte"), ("gpt2", "train"), ("qwen2", "train")]  # both tokenizer kinds, each architecture


@needs_llama_cpp
@pytest.mark.parametrize("quantize", ["f16", "q8_0"])
@pytest.mark.parametrize(("architecture", "tokenizer_kind"), CASES)
def test_llama_cpp_tokenizes_and_continues_as_transformers(
    tmp_path: Path, architecture: str, tokenizer_kind: str, quantize: str
) -> None:
    from llmtune.export.runners import LlamaCppSide

    model, tokenizer = tiny(architecture, tokenizer_kind)
    record = write_gguf(model, tokenizer, tmp_path, quantize, "tiny")
    side, reference = LlamaCppSide(tmp_path / record["file"], 256), TorchRunner(model, tokenizer, None)
    try:
        for prompt in PROMPTS:
            assert side.encode(prompt) == reference.encode(prompt)
        rows = parity.Rows("prompts", PROMPTS, references=PROMPTS)
        figures = parity.compare_lms(reference, side, rows, max_new_tokens=12)
    finally:
        side.close()
    assert figures["identical_continuations"] == 1.0, figures["examples"]
    assert figures["loglik_diff"] < (1e-3 if quantize == "f16" else 1e-2)


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "qwen2"])
def test_transformers_loads_the_file(tmp_path: Path, architecture: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = tiny(architecture, "train")
    record = write_gguf(model, tokenizer, tmp_path, "f16", "tiny")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=record["file"]).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=record["file"])
    ids = tokenizer(PROMPTS[2], return_tensors="pt")
    assert reloaded_tokenizer(PROMPTS[2])["input_ids"] == ids["input_ids"][0].tolist()
    with torch.no_grad():
        expected, got = model(**ids).logits, loaded(**ids).logits
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-3)  # f16 weights


@pytest.mark.slow
def test_the_run_exports_with_its_figures_and_a_card(sft_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "gguf"
    result = invoke("export", sft_run, "--format", "gguf", "--quantize", "q8_0", "--output", out)
    assert result.code == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        ".llmtune-export.json",
        "README.md",
        "export.json",
        "model-q8_0.gguf",
    ]
    record = json.loads((out / "export.json").read_text())
    gate = record["parity"]
    assert gate["passed"] and gate["figures"]["prompts"] == 8 and gate["figures"]["token_agreement"] >= 0.8
    assert record["files"]["tensor_types"]["Q8_0"] > 0 and record["merged"] is True
    card = (out / "README.md").read_text()
    assert "model-q8_0.gguf" in card and "built from scratch" in card and str(tmp_path) not in card


@pytest.mark.slow
def test_a_zeroed_tensor_fails_the_gate(
    sft_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmtune.export.gguf_format as gguf_format

    real = gguf_format._tensors

    def zero_the_final_norm(model, arch):
        for name, data in real(model, arch):
            yield name, (np.zeros_like(data) if name == "model.norm.weight" else data)

    monkeypatch.setattr(gguf_format, "_tensors", zero_the_final_norm)
    out = tmp_path / "broken"
    result = invoke("export", sft_run, "--format", "gguf", "--output", out)
    assert result.code == 1, result.stderr[-3000:]
    assert "does not behave like the trained model" in result.stderr and "loglik_diff" in result.stderr
    assert not out.exists()


def test_gguf_refuses_what_it_cannot_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    from llmtune.errors import BadInput

    model, tokenizer = tiny("llama")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    bert_tokenizer = AutoTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(BadInput, match="byte-level BPE"):
        write_gguf(model, bert_tokenizer, tmp_path, "f16", "tiny")
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # not installed
    assert_bad_input(
        invoke("export", tmp_path / "model", "--format", "gguf", "--output", tmp_path / "o"), "llmtune[gguf]"
    )
