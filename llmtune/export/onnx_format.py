"""ONNX export: torch's own exporter writes model.onnx, ONNX Runtime quantises it (int8) and runs it.

Hugging Face's exporter (optimum-onnx) requires transformers < 4.58, so the graph is traced with
`torch.onnx.export` (the TorchScript path: no extra package) and the folder is laid out as
optimum lays it out: model.onnx, config.json (id2label, label_range) and the tokenizer files,
so that `optimum.onnxruntime.ORTModelFor...` and a bare `onnxruntime.InferenceSession` both load
it. Inputs are input_ids and attention_mask (and token_type_ids where the tokenizer makes them),
int64, shaped [batch_size, sequence_length]; the one output is `logits`: [batch_size, labels]
for a head, [batch_size, sequence_length, vocabulary] for a causal LM (no KV cache: each step of
a generation runs the whole sequence again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llmtune.errors import BadInput

MODEL_FILE = "model.onnx"
OPSET = 17
INT8_CHOICES = {
    # name: (weight type, per channel, ops whose weights are quantised; None: ORT's default set).
    # int8 is the choice measured best on the quickstart (bench/results/export_parity.md): the
    # matrices' weights per output channel, the embedding tables kept in float32 (label agreement
    # 0.994 on its test split, 58 MB); int8-per-tensor is ORT's default (0.963, 23 MB)
    "int8": ("QUInt8", True, ["MatMul"]),
    "int8-per-tensor": ("QInt8", False, None),
}


def require_onnx() -> None:
    """Exit 2 naming the extra when onnx / onnxruntime are not installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise BadInput(
            f"--format onnx needs {exc.name}: pip install 'llmtune[onnx]' (onnx and onnxruntime)",
            key="--format",
        ) from None


def _graph(model: Any, names: list[str], causal: bool) -> Any:
    """The model's forward as the graph's function: tensors in, logits out (no KV cache)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            kwargs = dict(zip(names, tensors, strict=True))
            return self.model(**kwargs, use_cache=False).logits if causal else self.model(**kwargs).logits

    return Logits().eval()  # export restores the mode it found: train would turn dropout on


def _is_causal(model: Any) -> bool:
    return type(model).__name__.endswith("ForCausalLM") or type(model).__name__.endswith("LMHeadModel")


def input_names(model: Any, tokenizer: Any) -> list[str]:
    """The graph's inputs: what the tokenizer makes that the model's forward takes."""
    import inspect

    takes = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names and "token_type_ids" in takes:
        names.append("token_type_ids")
    return names


def write_onnx(model: Any, tokenizer: Any, folder: Path, quantize: str | None) -> dict[str, Any]:
    """model.onnx (float32, or int8 weights through ONNX Runtime's dynamic quantisation), the
    config and the tokenizer, into `folder`; returns what export.json records of it."""
    import torch

    model = model.float().eval()
    names = input_names(model, tokenizer)
    causal = _is_causal(model)
    sample = tokenizer(
        ["an example input", "a second, longer example input"], padding=True, return_tensors="pt"
    )
    args = tuple(sample[name] for name in names)
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in names}
    axes["logits"] = {0: "batch_size", 1: "sequence_length"} if causal else {0: "batch_size"}
    plain = folder / (MODEL_FILE if quantize is None else "model-float32.onnx")
    with torch.no_grad():
        torch.onnx.export(
            _graph(model, names, causal),
            args,
            str(plain),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    record: dict[str, Any] = {"file": MODEL_FILE, "inputs": names, "outputs": ["logits"], "opset": OPSET}
    if quantize is not None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        weight_type, per_channel, ops = INT8_CHOICES[quantize]
        quantize_dynamic(
            str(plain),
            str(folder / MODEL_FILE),
            weight_type=getattr(QuantType, weight_type),
            per_channel=per_channel,
            op_types_to_quantize=ops,
        )
        plain.unlink()
        record["quantization"] = {
            "method": "onnxruntime dynamic quantisation",
            "weights": weight_type,
            "per_channel": per_channel,
            "ops": ops or "onnxruntime's default (MatMul, Gather, ...)",
            "activations": "QUInt8, per batch at run time",
        }
    model.config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return record


class OnnxRunner:
    """An exported folder loaded the way a deployment loads it: onnxruntime + the saved tokenizer."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime
        from transformers import AutoTokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # parity, not speed: stay out of the way of other jobs
        self.session = onnxruntime.InferenceSession(
            str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        self.names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def logits(self, encoded: dict[str, Any]) -> np.ndarray:
        """The graph's logits for a tokenizer's output (numpy or torch tensors)."""
        feed = {name: np.asarray(encoded[name], dtype=np.int64) for name in self.names}
        return self.session.run(["logits"], feed)[0]

    def next_token_logits(self, ids: list[int]) -> np.ndarray:
        """A causal LM's logits for the token after `ids` (the whole sequence is run: no cache)."""
        batch = np.asarray([ids], dtype=np.int64)
        feed = {"input_ids": batch, "attention_mask": np.ones_like(batch)}
        return self.session.run(["logits"], feed)[0][0, -1]
