"""GGUF export of causal LMs (llama, qwen2, gpt2), written with the `gguf` package.

The `gguf` package on PyPI ships the file format (GGUFWriter), llama.cpp's tensor-name maps, its
vocab helpers and the q8_0 quantiser, but not llama.cpp's converter (convert_hf_to_gguf.py), so
this module does the converter's part for the three architectures, as that script does it:
llama's q/k projections are permuted to llama.cpp's rotary layout, gpt2's Conv1D weights are
transposed, the output matrix is written even when tied to the embeddings. The tokenizer must be
byte-level BPE (gpt2's kind: what scratch models, gpt2, Qwen2 and Llama 3 use); SentencePiece
tokenizers are refused with a clear message.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from llmtune.errors import BadInput

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "GPT2LMHeadModel": "gpt2"}
QUANTIZATIONS = ("f16", "q8_0")
# the pre-tokenizer regexes llama.cpp knows by name (llama-vocab.cpp); gpt2's is ByteLevel's own
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = QWEN2_SPLIT.replace(r"\p{N}|", r"\p{N}{1,3}|")


def require_gguf() -> None:
    """Exit 2 naming the extra when the gguf package is not installed."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise BadInput(
            "--format gguf needs the gguf package: pip install 'llmtune[gguf]'", key="--format"
        ) from None


def gguf_file_name(quantize: str) -> str:
    """The file's name in the export folder: model-f16.gguf, model-q8_0.gguf."""
    return f"model-{quantize}.gguf"


def check_supported(model: Any) -> str:
    """The GGUF architecture name of `model`, or exit 2 saying which ones are supported."""
    name = type(model).__name__
    if name not in ARCHITECTURES:
        raise BadInput(
            f"GGUF export supports causal LMs of {', '.join(sorted(ARCHITECTURES.values()))}; this model is a "
            f"{name}{' (a classifier: use --format onnx)' if 'Classification' in name else ''}",
            key="--format",
        )
    return ARCHITECTURES[name]


def write_gguf(model: Any, tokenizer: Any, folder: Path, quantize: str, name: str) -> dict[str, Any]:
    """DIR/model-<quantize>.gguf with the weights, hyper-parameters and tokenizer; returns what
    export.json records of it."""
    import gguf

    arch = check_supported(model)
    config = model.config
    path = folder / gguf_file_name(quantize)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    _hyperparameters(writer, arch, config)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if quantize == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    writer.add_file_type(file_type)
    _vocab(writer, tokenizer, folder)
    names = gguf.TensorNameMap(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    kinds: dict[str, int] = {}
    for hf_name, tensor in _tensors(model, arch):
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise RuntimeError(f"no GGUF name for tensor {hf_name} of {arch}")
        data, qtype = _encode(tensor, quantize, gguf)
        writer.add_tensor(new_name, data, raw_dtype=qtype)
        kinds[qtype.name] = kinds.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file": path.name, "architecture": arch, "quantization": quantize, "tensor_types": kinds}


def _hyperparameters(writer: Any, arch: str, config: Any) -> None:
    writer.add_block_count(config.num_hidden_layers)
    writer.add_embedding_length(config.hidden_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    if arch == "gpt2":
        writer.add_context_length(config.n_positions)
        writer.add_feed_forward_length(config.n_inner or 4 * config.hidden_size)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    writer.add_context_length(config.max_position_embeddings)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count_kv(config.num_key_value_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    writer.add_rope_freq_base(float(theta or getattr(config, "rope_theta", 10000.0)))
    if isinstance(rope, dict) and rope.get("rope_type", "default") != "default":
        raise BadInput(f"GGUF export does not carry rope scaling ({rope['rope_type']}) yet", key="--format")


def _tensors(model: Any, arch: str) -> Any:
    """(HF name, float32 numpy array) in llama.cpp's layout, as convert_hf_to_gguf.py makes them."""
    config = model.config
    state = model.state_dict()
    for hf_name, tensor in state.items():
        if hf_name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue  # buffers, not weights
        data = tensor.detach().float().numpy()
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
            data = _permute(data, heads)
        if arch == "gpt2" and hf_name.endswith(("attn.c_attn.weight", "c_proj.weight", "mlp.c_fc.weight")):
            data = data.T  # Conv1D stores (in, out)
        yield hf_name, np.ascontiguousarray(data)
    if "lm_head.weight" not in state:  # tied and not listed: llama.cpp gets it written out
        yield "lm_head.weight", model.get_output_embeddings().weight.detach().float().numpy()


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama's rotary halves (HF) to llama.cpp's interleaved pairs, per head."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _encode(data: np.ndarray, quantize: str, gguf: Any) -> tuple[np.ndarray, Any]:
    """Norms and biases stay float32 (llama.cpp's rule); matrices become f16 or q8_0 (f16 when a
    row is not a whole number of q8_0 blocks)."""
    kinds = gguf.GGMLQuantizationType
    if data.ndim < 2:
        return data.astype(np.float32), kinds.F32
    if quantize == "q8_0" and data.shape[-1] % 32 == 0:
        return gguf.quants.quantize(data, kinds.Q8_0), kinds.Q8_0
    return data.astype(np.float16), kinds.F16


def _vocab(writer: Any, tokenizer: Any, folder: Path) -> None:
    """The tokenizer as llama.cpp's "gpt2" (byte-level BPE) model: tokens, types, merges,
    special ids, whether BOS/EOS are added, the chat template."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if (spec.get("model") or {}).get("type") != "BPE" or not _byte_level(spec):
        raise BadInput(
            "GGUF export supports byte-level BPE tokenizers (gpt2's kind, used by scratch models, gpt2, "
            "Qwen2 and Llama 3); this model's is not one",
            key="--format",
        )
    vocab_size = len(tokenizer)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_ids)
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i, f"[PAD{i}]")
        tokens.append(token)
        if i in special or token not in tokenizer.get_vocab():
            types.append(gguf.TokenType.CONTROL)
        elif token in added:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory(dir=folder) as saved:  # SpecialVocab reads the saved files
        tokenizer.save_pretrained(saved)
        special_vocab = gguf.SpecialVocab(saved, load_merges=True, n_vocab=vocab_size)
    if not special_vocab.merges:  # a byte tokenizer has none; llama.cpp insists on the key
        # a pair of special tokens: never two symbols of a word, so it never merges anything
        special_vocab.merges = [placeholder_merge(tokenizer.bos_token, tokenizer.eos_token)]
    sample = tokenizer("a")["input_ids"]
    special_vocab.add_special_token = {
        "bos": tokenizer.bos_token_id is not None and sample[:1] == [tokenizer.bos_token_id],
        "eos": tokenizer.eos_token_id is not None and sample[-1:] == [tokenizer.eos_token_id],
    }
    if tokenizer.chat_template:
        special_vocab.chat_template = tokenizer.chat_template
    special_vocab.add_to_gguf(writer, quiet=True)


def placeholder_merge(bos: str, eos: str) -> str:
    """The one merge a byte tokenizer's file carries (llama.cpp needs the key): "<s> </s>"."""
    return f"{bos} {eos}"


def _byte_level(spec: dict[str, Any]) -> bool:
    return '"ByteLevel"' in json.dumps(spec.get("pre_tokenizer")) or '"ByteLevel"' in json.dumps(
        spec.get("decoder")
    )


def _pre_tokenizer(spec: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer regex."""
    text = json.dumps(spec.get("pre_tokenizer"))
    if json.dumps(QWEN2_SPLIT)[1:-1] in text:
        return "qwen2"
    if json.dumps(LLAMA3_SPLIT)[1:-1] in text:
        return "llama-bpe"
    if '"Split"' not in text:  # ByteLevel with its own regex: gpt2's
        return "gpt-2"
    raise BadInput(
        "GGUF export knows the pre-tokenizers of gpt2, Qwen2 and Llama 3; this tokenizer splits text "
        "another way, which llama.cpp would tokenize differently",
        key="--format",
    )
