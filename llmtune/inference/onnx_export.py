"""The ONNX folders `engine: onnx` runs: a folder from `llmtune export --format onnx`, or one
exported here on the fly into a cache llmtune owns, keyed by the model's fingerprint, so a
nightly cron exports once and then only opens the file.

A folder holds `model.onnx` (logits out of `input_ids` + `attention_mask`, and `token_type_ids`
when the model takes them), `config.json` and the tokenizer's files. int8 is ONNX Runtime's
dynamic quantisation (`onnxruntime.quantization.quantize_dynamic`, QUInt8 MatMul weights per channel,
activations quantised on the fly) into `model.int8.onnx` beside it.

`export_onnx` is the one function that writes the graph; `llmtune export --format onnx` may
replace it (same arguments, same folder layout).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CACHE_ENV = "LLMTUNE_ONNX_CACHE"
"""Where on-the-fly exports are kept (default: ~/.cache/llmtune/onnx)."""
EXPORT_VERSION = (
    "2"  # bump when export_onnx writes a different graph; 2: int8 as QUInt8 MatMul weights per channel
)


def is_onnx_folder(path: Path) -> bool:
    """A folder with an exported `model.onnx` and its `config.json`."""
    return path.is_dir() and (path / MODEL_FILE).is_file() and (path / "config.json").is_file()


def cache_root() -> Path:
    """The folder that holds on-the-fly exports, one subfolder per model fingerprint."""
    env = os.environ.get(CACHE_ENV)
    base = (
        Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmtune/onnx"
    )
    return base


def cache_key(parts: dict[str, Any], folders: list[Path]) -> str:
    """A fingerprint of how a model is built (`parts`) and of its folders' files."""
    from llmtune.inference.journal import folder_fingerprint

    digest = hashlib.sha256(json.dumps({**parts, "v": EXPORT_VERSION}, sort_keys=True, default=str).encode())
    for folder in folders:
        digest.update(folder_fingerprint(folder).encode())
    return digest.hexdigest()[:20]


def cached_export(key: str, write: Any) -> Path:
    """The cache folder for `key`, exported by `write(folder)` when it is not there yet. The export
    goes into a temporary folder beside it and is renamed into place, so a killed export or two
    processes exporting at once never leave a half-written folder behind."""
    target = cache_root() / key
    if is_onnx_folder(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        write(scratch)
        try:
            os.replace(scratch, target)
        except OSError:  # another process renamed its export into place first: use that one
            if not is_onnx_folder(target):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def quantized(folder: Path, write_into: Path | None = None) -> Path:
    """`folder`'s model quantised to dynamic int8 (`model.int8.onnx`), written beside it, or into
    `write_into` (a cache folder) when `folder` is the user's export; returns the .onnx file."""
    source = folder / MODEL_FILE
    target = (write_into or folder) / INT8_FILE
    if target.is_file():
        return target
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    # the choice `llmtune export --quantize int8` measured best on the quickstart (labels 0.994 of
    # float32's against 0.975-0.981 for QInt8 per channel; bench/results/export_parity.md):
    # QUInt8 weights per output channel on the matrices, embedding tables kept in float32
    quantize_dynamic(
        str(source),
        str(partial),
        weight_type=QuantType.QUInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
    )
    os.replace(partial, target)
    return target


def export_onnx(model: Any, tokenizer: Any, folder: Path, quantize: bool = False) -> Path:
    """Write `model` (a transformers model in float32 on the CPU: a causal LM or a sequence
    classifier) into `folder` as `model.onnx` + config.json + tokenizer files; with `quantize`
    also `model.int8.onnx`. Returns the folder."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.float().cpu().eval()
    from llmtune.models.info import model_head

    causal = model_head(model) != "classification"
    names = ["input_ids", "attention_mask"]
    takes_types = "token_type_ids" in _forward_params(model) and not causal
    if takes_types:
        names.append("token_type_ids")
    # traced with a padded row, so the mask path is what the graph keeps
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]], dtype=torch.long)
    ids = ids.clamp(max=max(1, int(getattr(model.config, "vocab_size", 10)) - 1))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.long)
    inputs = (ids, mask, torch.zeros_like(ids)) if takes_types else (ids, mask)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch", 1: "sequence"} if causal else {0: "batch"}
    import warnings

    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it keeps dynamic
        torch.onnx.export(
            _LogitsOnly(model, causal, names),
            inputs,
            str(folder / MODEL_FILE),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model.config.architectures = [type(base).__name__]  # how the folder's head is told
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if quantize:
        quantized(folder)
    return folder


def _forward_params(model: Any) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


class _LogitsOnly:  # a torch.nn.Module made lazily (torch is imported only when exporting)
    def __new__(cls, model: Any, causal: bool, names: list[str]) -> Any:
        import torch

        class LogitsOnly(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *tensors: Any) -> Any:
                kwargs = dict(zip(names, tensors))
                if causal:
                    kwargs["use_cache"] = False
                return self.model(**kwargs).logits

        return LogitsOnly()
