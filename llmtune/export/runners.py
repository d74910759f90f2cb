"""The two sides of the parity gate, each with its own tokenizer: the run's model in transformers
(the reference), and the export in its runtime (ONNX Runtime; llama.cpp, or transformers' GGUF
reader when llama-cpp-python is not installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

BATCH = 16


class TorchRunner:
    """A transformers model and tokenizer: the reference side (and GGUF's fallback reader)."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int | None) -> None:
        # a model read from a GGUF file counts as quantized (already dequantized; .float() refuses it)
        model = model if getattr(model, "is_quantized", False) else model.float()
        self.model, self.tokenizer, self.max_length = model.eval(), tokenizer, max_length
        self.batch = BATCH

    def batches(self, texts: list[str], tensors: str) -> Any:
        """The texts tokenized in padded batches of `self.batch` (`tensors`: "pt" or "np")."""
        for start in range(0, len(texts), self.batch):
            yield self.tokenizer(
                texts[start : start + self.batch],
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
                return_tensors=tensors,
            )

    def head_logits(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return np.concatenate([self.model(**b).logits.float().numpy() for b in self.batches(texts, "pt")])

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def piece(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def eos(self) -> int | None:
        return self.tokenizer.eos_token_id

    def sequence_logits(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


class OnnxSide(TorchRunner):
    """An ONNX export through onnxruntime and the tokenizer saved beside it."""

    def __init__(self, folder: Path, max_length: int | None) -> None:
        from llmtune.export.onnx_format import OnnxRunner

        self.runner = OnnxRunner(folder)
        self.tokenizer, self.max_length = self.runner.tokenizer, max_length
        self.batch = BATCH

    def head_logits(self, texts: list[str]) -> np.ndarray:
        return np.concatenate([self.runner.logits(b) for b in self.batches(texts, "np")])

    def sequence_logits(self, ids: list[int]) -> np.ndarray:
        batch = np.asarray([ids], dtype=np.int64)
        return self.runner.logits({"input_ids": batch, "attention_mask": np.ones_like(batch)})[0]


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python is installed (the GGUF gate then runs llama.cpp itself)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


class LlamaCppSide:
    """A GGUF file in llama.cpp (llama-cpp-python), with the tokenizer inside the file."""

    def __init__(self, path: Path, n_ctx: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=1, verbose=False, seed=0
        )

    def encode(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def piece(self, token: int) -> str:
        return self.llm.detokenize([token]).decode("utf-8", errors="replace")

    def eos(self) -> int | None:
        return self.llm.token_eos()

    def close(self) -> None:
        """Free llama.cpp's model now (its finaliser fails when it runs at interpreter exit)."""
        self.llm.close()

    def sequence_logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)


def gguf_side(folder: Path, file: str, n_ctx: int) -> tuple[Any, str]:
    """(runner, its name) for a GGUF file: llama.cpp when installed, else transformers' reader."""
    if llama_cpp_available():
        return LlamaCppSide(folder / file, n_ctx), "llama.cpp (llama-cpp-python)"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=file)
    tokenizer = _byte_tokenizer(folder / file) or AutoTokenizer.from_pretrained(str(folder), gguf_file=file)
    return TorchRunner(model, tokenizer, None), "transformers' GGUF reader (llama-cpp-python not installed)"


def _byte_tokenizer(path: Path) -> Any:
    """transformers' tokenizer for a byte tokenizer's file, without its placeholder merge (a merge
    whose result is not in the vocabulary makes `tokenizers` panic); None for any other file."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer

    from llmtune.export.gguf_format import placeholder_merge

    arch, spec, config = get_gguf_tokenizer(str(path))
    if spec.get("merges") != [placeholder_merge(config["bos_token"], config["eos_token"])]:
        return None
    backend, extra = convert_gguf_tokenizer(arch, {**spec, "merges": []})
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)
