"""`engine: onnx`: ONNX Runtime on an exported model (the optional extra `llmtune[onnx]`).

The model is a folder from `llmtune export --format onnx` (model.onnx + config.json + tokenizer),
or any model llmtune loads (a folder, a hub id, a run, a scratch model), exported once into a
cache keyed by its fingerprint (`onnx_export`). `model.quantization: int8` runs ONNX Runtime's
dynamic int8 graph. What it serves:
- classification and regression heads (`classify` with soft labels, `score`): prompts are
  tokenized and truncated as engine hf does (keeping their start), sorted by length and run in
  batches under the token budget, so padding stays small;
- causal LMs: choice log-likelihoods and classify-by-likelihood, each `prompt + choice` scored
  whole (split into tokens as lm-evaluation-harness does, as engine hf). The graph has no KV
  cache, so it does not generate: `task: generate` is refused at --dry-run.
The rows, fingerprints, resume, lock, errors file and exit codes are the job's own.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput
from llmtune.inference.interface import (
    ChoiceScores,
    EngineRequest,
    Generation,
    Supports,
    chat_prompt,
    dedupe,
    encode_prompt,
    label_probabilities,
    softmax,
    split_continuations,
)
from llmtune.inference.onnx_export import (
    INT8_FILE,
    MODEL_FILE,
    cache_key,
    cache_root,
    cached_export,
    export_onnx,
    is_onnx_folder,
    quantized,
)

INSTALL_HINT = "engine: onnx needs ONNX Runtime: pip install 'llmtune[onnx]'"
NO_GENERATE = "engine: onnx scores and classifies but does not generate; use engine: hf or llamacpp"
LOGITS_BUDGET = 64 << 20  # float32 logits one causal batch may return (batch x tokens x vocab)


def require(key: str = "engine") -> None:
    """BadInput (exit 2, before anything is written) when ONNX Runtime is not installed."""
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        raise BadInput(INSTALL_HINT, key=key)


def check_model(head: str | None, path: str | None = None, key: str = "engine") -> None:
    """BadInput for what ONNX Runtime cannot run here: a GGUF file (llama.cpp's format)."""
    if path and str(path).lower().endswith(".gguf"):
        raise BadInput(f"{path} is a GGUF file (llama.cpp); use engine: llamacpp", key="model.path")
    if head not in ("causal_lm", "classification"):
        raise BadInput(f"engine: onnx serves causal LMs and classifiers; this model is {head}", key=key)


def check_task(task: str, key: str = "task") -> None:
    """BadInput for a task this engine cannot do (generation: the graph has no KV cache)."""
    if task == "generate":
        raise BadInput(NO_GENERATE, key=key)


def open_engine(request: EngineRequest) -> OnnxEngine:
    """`engine: onnx` (the registry's factory): the request's ONNX folder, or its model exported
    into the cache first; int8 when `model.quantization: int8`."""
    from llmtune.models.cpu import runtime_threads

    ref = request.ref
    if ref.quantization not in ("none", "int8"):
        raise BadInput(
            f"engine: onnx runs float32 or int8 (ONNX Runtime's); got quantization: {ref.quantization}",
            key=f"{request.key}.quantization",
        )
    folder = _onnx_folder(request)
    model_file = folder / MODEL_FILE
    if ref.quantization == "int8":
        model_file = folder / INT8_FILE
        if not model_file.is_file():  # a user's export is quantised into the cache, not into it
            into = None
            if folder.parent != cache_root():
                into = cached_export(
                    cache_key({"int8_of": "export"}, [folder]), lambda d: _copy_meta(folder, d)
                )
            model_file = quantized(folder, into)
    threads = runtime_threads(ref.threads)
    return OnnxEngine(
        folder,
        model_file,
        threads=threads,
        batch_size=request.batch_size,
        max_batch_tokens=request.max_batch_tokens,
        max_length=request.max_length,
        label_range=request.label_range,
    )


def inspect_model(ref: Any, recipe: Any, key: str = "model") -> Any:
    """The ModelInfo of an ONNX export folder (from its config.json), or of the cached export of
    the model (a nightly run reads one small file, imports no torch); None for a model not
    exported yet (the job inspects it as engine hf does)."""
    from llmtune.models.info import info_of_config

    if ref.path and str(ref.path).lower().endswith(".gguf"):
        check_model("causal_lm", ref.path)  # refused: llama.cpp's format
    folder = onnx_model_folder(ref, recipe, key) or cached_folder(ref, recipe, key)
    if folder is None:
        return None
    config_file = folder / "config.json"
    return info_of_config(json.loads(config_file.read_text()), config_file, folder)


def onnx_model_folder(ref: Any, recipe: Any, key: str = "model") -> Path | None:
    """The ONNX export folder `ref.path` names, or None when it is another kind of model."""
    if ref.path is None or ref.scratch is not None or ref.adapter:
        return None
    path = recipe.resolve_path(ref.path)
    return path if is_onnx_folder(path) else None


def _onnx_folder(request: EngineRequest) -> Path:
    ready = onnx_model_folder(request.ref, request.recipe, request.key)
    if ready is not None:
        return ready
    ref = request.ref

    def write(folder: Path) -> None:
        from llmtune.console import say
        from llmtune.models.loading import load_model, merged_for_inference, quiet_libraries

        quiet_libraries(debug=False)
        say(f"engine onnx: exporting {ref.describe()} to ONNX once (cached for later runs)")
        loaded = request.loaded  # a model the job loaded already serves when it is plain float32
        if loaded is None or ref.quantization != "none" or ref.dtype not in ("auto", "float32"):
            plain = ref.model_copy(update={"quantization": "none", "dtype": "float32", "device": "cpu"})
            loaded = load_model(
                plain, request.recipe, head=request.head, labels=request.labels, key=request.key
            )
        export_onnx(merged_for_inference(loaded.model), loaded.tokenizer, folder, quantize=False)

    return cached_export(_export_key(ref, request.recipe, request.key), write)


def _export_key(ref: Any, recipe: Any, key: str) -> str:
    """The cache key of `ref`'s export: how it is loaded and its folders' files (a scratch model:
    its spec, seed and label names, which make its weights and head)."""
    from llmtune.models.info import resolve_model_path

    parts: dict[str, Any] = {
        "ref": ref.model_dump(exclude={"device", "threads", "path", "adapter", "quantization", "dtype"})
    }
    folders: list[Path] = []
    if ref.scratch is not None:
        parts["seed"] = recipe.seed  # scratch weights come from the seed
        parts["labels"] = getattr(recipe, "labels", None)
    else:
        folders.append(Path(resolve_model_path(ref, recipe, key)))
        if ref.adapter:
            folders.append(recipe.resolve_path(ref.adapter))
    return cache_key(parts, folders)


def cached_folder(ref: Any, recipe: Any, key: str = "model") -> Path | None:
    """The export of `ref` already in the cache (checked when it was made), or None."""
    folder = cache_root() / _export_key(ref, recipe, key)
    return folder if is_onnx_folder(folder) else None


def _copy_meta(source: Path, target: Path) -> None:
    import shutil

    for file in source.iterdir():
        if file.is_file() and not file.name.endswith(".onnx"):
            shutil.copy2(file, target / file.name)
    (target / MODEL_FILE).symlink_to((source / MODEL_FILE).resolve())


class OnnxEngine:
    """ONNX Runtime behind the methods the jobs call on every engine."""

    def __init__(
        self,
        folder: Path,
        model_file: Path,
        *,
        threads: int,
        batch_size: int | str = "auto",
        max_batch_tokens: int = 16384,
        max_length: int = 2048,
        label_range: tuple[float, float] | None = None,
    ) -> None:
        """Open `model_file` with the tokenizer and config of `folder` on `threads` CPU threads."""
        import onnxruntime as ort
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        from llmtune.models.regression_head import is_regression, label_range_of

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        # a tokenizer.json loads without transformers' model registry (and so without torch)
        fast = (folder / "tokenizer.json").is_file()
        self.tokenizer = (PreTrainedTokenizerFast if fast else AutoTokenizer).from_pretrained(folder)
        self.config = json.loads((folder / "config.json").read_text())
        # logits of a head are (batch, labels); a causal LM's are (batch, sequence, vocabulary)
        self.classifier = len(self.session.get_outputs()[0].shape) == 2
        self.regression = self.classifier and is_regression(self.config)
        self.label_range = label_range or label_range_of(self.config)
        self.max_length = max_length
        self.batch_size = 32 if batch_size == "auto" else int(batch_size)
        self.max_batch_tokens = max_batch_tokens
        self.threads = threads
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.vocab = int(self.config.get("vocab_size") or 32000)
        self.description = f"ONNX Runtime {ort.__version__}, {model_file.name}, {threads} thread(s)"

    @property
    def supports(self) -> Supports:
        """Heads classify and score; causal LMs score choices (no generation: no KV cache)."""
        causal = not self.classifier
        return Supports(generate=False, choices=causal, heads=self.classifier, description=self.description)

    def close(self) -> None:
        """Drop the ONNX Runtime session."""
        self.session = None

    def encode(self, prompt: str) -> list[int]:
        """Token ids as engine hf makes them (no second BOS after a rendered chat template)."""
        return encode_prompt(self.tokenizer, prompt)

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        """Prompt lengths in tokens, before truncation."""
        return [len(self.encode(p)) for p in prompts]

    def apply_chat_template(self, prompt: str, system: str | None = None) -> str:
        """The prompt as the user turn of the tokenizer's chat template."""
        return chat_prompt(self.tokenizer, prompt, system, None)

    def generate(self, prompts: list[str], **settings: Any) -> list[Generation]:
        """Refused: the exported graph has no KV cache (the job refuses task: generate first)."""
        raise BadInput(NO_GENERATE, key="engine")

    # ------------------------------------------------------------------ heads
    def head_labels(self) -> list[str]:
        """The classification head's label names, in output order."""
        id2label = self.config.get("id2label") or {}
        return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label))]

    def classify(self, prompts: list[str], labels: list[str]) -> list[dict[str, float]]:
        """A probability per label for each prompt: the head's softmax over `labels`' outputs, or
        for a causal LM the softmax of the labels' log-likelihood sums (as engine hf)."""
        from llmtune.models.info import head_columns

        if not self.classifier:
            return label_probabilities(self.score_choices, prompts, labels)
        names = self.head_labels()
        columns = head_columns(names, labels)
        if columns is None:
            raise BadInput(
                f"labels {labels} do not match the model's classification head {names}", key="labels"
            )
        return [dict(zip(labels, softmax([row[c] for c in columns]))) for row in self._head_outputs(prompts)]

    def score(self, prompts: list[str]) -> list[float]:
        """The number a regression head predicts, in the label's units."""
        from llmtune.models.regression_head import from_unit

        if not self.regression:
            raise ValueError("score needs a regression head (one output); this model has none")
        return [from_unit(row[0], self.label_range) for row in self._head_outputs(prompts)]

    def _head_outputs(self, prompts: list[str]) -> list[list[float]]:
        unique, where = dedupe(prompts)
        encoded = [
            self.tokenizer(p, truncation=True, max_length=self.max_length)["input_ids"] for p in unique
        ]
        results: list[list[float]] = [[] for _ in unique]
        for batch in self._batches([len(e) for e in encoded], extra=0):
            logits = self._run([encoded[i] for i in batch])
            for i, row in zip(batch, logits.tolist()):
                results[i] = row
        return [list(results[j]) for j in where]

    # ---------------------------------------------------------------- choices
    def score_choices(self, prompts: list[str], choices: list[str]) -> list[ChoiceScores]:
        """Log-likelihood of each choice as the continuation of each prompt (causal LMs)."""
        import numpy as np

        if self.classifier:
            raise ValueError("score_choices needs a causal LM; this model has a classification head")
        unique, where = dedupe(prompts)
        sequences, spans = [], []
        for prompt in unique:
            context, conts = split_continuations(self.encode, prompt, choices, self.max_length)
            for cont in conts:
                sequences.append(context + cont)
                spans.append((len(context), len(cont)))
        sums = [0.0] * len(sequences)
        for batch in self._batches([len(s) for s in sequences], extra=0, logits=True):
            logits = self._run([sequences[i] for i in batch])
            for row, i in enumerate(batch):
                start, n = spans[i]
                rows = logits[row, start - 1 : start - 1 + n].astype(np.float64)
                logprobs = rows - _logsumexp(rows)
                sums[i] = float(logprobs[np.arange(n), sequences[i][start : start + n]].sum())
        k = len(choices)
        scores = []
        for p in range(len(unique)):
            part, counts = sums[p * k : (p + 1) * k], [spans[p * k + j][1] for j in range(k)]
            scores.append(ChoiceScores(part, [s / n for s, n in zip(part, counts)], counts))
        return [scores[j] for j in where]

    # ------------------------------------------------------------------- runs
    def _batches(self, lengths: list[int], *, extra: int, logits: bool = False) -> list[list[int]]:
        """Indices grouped by similar length under the batch size and token budget (for causal
        LMs also under the logits budget, which grows with the vocabulary)."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = lengths[i] + extra
            rows = len(current) + 1
            over = rows > self.batch_size or rows * width > self.max_batch_tokens
            if logits:
                over = over or rows * width * self.vocab * 4 > LOGITS_BUDGET
            if current and over:
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _run(self, rows: list[list[int]]) -> Any:
        """The graph's logits for right-padded rows (padding masked out)."""
        import numpy as np

        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for n, r in enumerate(rows):
            ids[n, : len(r)] = r
            mask[n, : len(r)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        return self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.inputs})[0]


def _logsumexp(rows: Any) -> Any:
    import numpy as np

    top = rows.max(axis=-1, keepdims=True)
    return top + np.log(np.exp(rows - top).sum(axis=-1, keepdims=True))
