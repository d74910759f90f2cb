"""Parity of `llmtune export` with the trained model, per format and quantisation.

ONNX (a classifier: the quickstart, runs/quickstart, all-MiniLM-L6-v2 + LoRA on data/sentiment):
the merged model in transformers (float32) against model.onnx in onnxruntime, float32 and each
int8 choice of ONNX Runtime's dynamic quantisation (QInt8 / QUInt8 weights, per tensor / per
channel), on the run's 160-review test split (predictions.jsonl), one review at a time (batch 1)
and in padded batches of 16 (int8 quantises activations per batch, so padding changes them).

GGUF (a causal LM: the RLHF demo's SFT policy, runs/rlhf-sft, a scratch llama with a byte
tokenizer): greedy continuations (16 new tokens) of the test split's first 16 prompts and the
mean log-likelihood of 64 reference texts, transformers (float32) against the GGUF file in
llama.cpp (llama-cpp-python) when it is installed, else transformers' GGUF reader.

    make run; llmtune finetune recipes/rlhf-sft.yaml   # the two runs
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_export.py [--onnx-run DIR] [--gguf-run DIR]

Writes bench/results/export_parity.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VARIANTS = [  # (name, weight type, per channel, ops quantised: None is ORT's default set)
    ("QInt8 per tensor, all ops (ORT's default; --quantize int8-per-tensor)", "QInt8", False, None),
    ("QInt8 per channel, all ops", "QInt8", True, None),
    ("QUInt8 per channel, all ops", "QUInt8", True, None),
    ("QInt8 per channel, MatMul only", "QInt8", True, ["MatMul"]),
    ("QUInt8 per channel, MatMul only (--quantize int8)", "QUInt8", True, ["MatMul"]),
]


def onnx_table(run: Path, work: Path) -> list[str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from llmtune.export import formats
    from llmtune.export.hf_format import model_folder
    from llmtune.export.onnx_format import write_onnx
    from llmtune.export.runners import OnnxSide, TorchRunner
    from llmtune.export.verify_data import verify_rows

    model, tokenizer, _ = formats._standalone(model_folder(run), "onnx", None)
    rows = verify_rows(run, None, "classification")
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    reference = TorchRunner(model, tokenizer, 128)
    ref_probs = _softmax(reference.head_logits(rows.texts))
    ref_labels = [labels[i] for i in ref_probs.argmax(1)]
    plain = work / "fp32"
    plain.mkdir()
    write_onnx(model, tokenizer, plain, None)
    candidates = [("float32", plain)]
    for index, (name, weights, per_channel, ops) in enumerate(VARIANTS):
        folder = work / f"variant-{index}"
        folder.mkdir()
        for file in plain.iterdir():
            if file.name != "model.onnx":
                (folder / file.name).write_bytes(file.read_bytes())
        quantize_dynamic(
            str(plain / "model.onnx"),
            str(folder / "model.onnx"),
            weight_type=getattr(QuantType, weights),
            per_channel=per_channel,
            op_types_to_quantize=ops,
        )
        candidates.append((name, folder))
    lines = [
        f"Rows: {rows.source}, {len(rows.texts)} reviews. Reference: the merged model in transformers, float32 "
        "(it agrees with the run's own predictions.jsonl on "
        f"{np.mean([a == b for a, b in zip(ref_labels, rows.run_predictions)]):.4f} of rows).",
        "",
        "| model.onnx | size (MB) | batch | label agreement | max prob diff | accuracy | s (160 rows) |",
        "|---|---|---|---|---|---|---|",
    ]
    gold = rows.gold or []
    for name, folder in candidates:
        side = OnnxSide(folder, 128)
        for batch in (1, 16):
            side.batch = batch
            start = time.perf_counter()
            probs = _softmax(side.head_logits(rows.texts))
            seconds = time.perf_counter() - start
            got = [labels[i] for i in probs.argmax(1)]
            agreement = np.mean([a == b for a, b in zip(got, ref_labels)])
            accuracy = np.mean([a == b for a, b in zip(got, gold)])
            size = (folder / "model.onnx").stat().st_size / 1e6
            lines.append(
                f"| {name} | {size:.1f} | {batch} | {agreement:.4f} | {np.abs(probs - ref_probs).max():.4f} | "
                f"{accuracy:.4f} | {seconds:.1f} |"
            )
    return lines


def gguf_table(run: Path, work: Path) -> list[str]:
    from llmtune.export import formats, parity
    from llmtune.export.gguf_format import write_gguf
    from llmtune.export.hf_format import model_folder
    from llmtune.export.runners import TorchRunner, gguf_side
    from llmtune.export.verify_data import verify_rows

    model, tokenizer, _ = formats._standalone(model_folder(run), "gguf", None)
    rows = verify_rows(run, None, "causal_lm")
    reference = TorchRunner(model, tokenizer, None)
    lines = [
        f"Prompts: {rows.source}; the first {len(rows.texts)} prompts, {formats.MAX_NEW_TOKENS} new tokens, "
        f"greedy; log-likelihood over {len(rows.references)} prompt+answer texts.",
        "",
        "| file | runtime | size (MB) | token agreement | identical continuations | first divergence | "
        "mean log-lik (model / file) | max log-lik diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for quantize in ("f16", "q8_0"):
        folder = work / quantize
        folder.mkdir()
        record = write_gguf(model, tokenizer, folder, quantize, "bench")
        side, runtime = gguf_side(folder, record["file"], 2048)
        f = parity.compare_lms(reference, side, rows, formats.MAX_NEW_TOKENS)
        size = (folder / record["file"]).stat().st_size / 1e6
        lines.append(
            f"| {record['file']} | {runtime} | {size:.2f} | {f['token_agreement']:.4f} | "
            f"{f['identical_continuations']:.4f} | {f['first_divergence']} | "
            f"{f['loglik_model']:.4f} / {f['loglik_export']:.4f} | {f['loglik_diff']:.2g} |"
        )
    return lines


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def machine() -> str:
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        line = next(ln for ln in info.splitlines() if ln.startswith("flags"))
        flags = " ".join(f for f in line.split() if f.startswith(("avx", "amx", "fma", "vnni")))
    except (OSError, StopIteration):
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags: {flags}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-run", type=Path, default=ROOT / "runs" / "quickstart")
    parser.add_argument("--gguf-run", type=Path, default=ROOT / "runs" / "rlhf-sft")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "export_parity.md")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "onnx").mkdir()
        (work / "gguf").mkdir()
        onnx = (
            onnx_table(args.onnx_run, work / "onnx") if args.onnx_run.is_dir() else ["(no run at --onnx-run)"]
        )
        gguf = (
            gguf_table(args.gguf_run, work / "gguf") if args.gguf_run.is_dir() else ["(no run at --gguf-run)"]
        )
    load_after = os.getloadavg()
    loads = "load average {:.2f} {:.2f} {:.2f} before, {:.2f} {:.2f} {:.2f} after (1, 5, 15 min)"
    text = "\n".join(
        [
            "# Export parity: the export in its runtime against the trained model",
            "",
            f"commit {commit.stdout.strip()}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {machine()}; "
            + loads.format(*load_before, *load_after)
            + "; one thread (torch and onnxruntime); command: `python bench/bench_export.py`",
            "",
            "## ONNX: the quickstart classifier",
            "",
            *onnx,
            "",
            "## GGUF: the RLHF demo's SFT policy (causal LM)",
            "",
            *gguf,
            "",
        ]
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
