"""Loading models for every job: hub ids through the local cache, local folders, adapters,
quantization (qlora: a 4-bit NF4 base), empty (meta-device) models for dry runs, and small models
built from scratch with a tokenizer that needs no download. The files are checked first
(`llmtune.models.info`), so a wrong model is a clear bad-input error, never a wrong answer."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput
from llmtune.models import info
from llmtune.models.cpu import check_int8, int8_device, quantize_int8, use_threads
from llmtune.models.info import Head as Head  # re-exported: callers import it from here
from llmtune.models.info import ModelInfo
from llmtune.models.info import resolve_model_path as resolve_model_path  # re-exported
from llmtune.models.scratch import build_scratch_model, build_tokenizer
from llmtune.recipes.common import ModelRef, RecipeBase


@dataclass
class LoadedModel:
    """A model ready to use, its tokenizer, and where it came from."""

    model: Any
    tokenizer: Any
    source: str
    device: str
    base_path: str | None = None  # the base model's folder when an adapter was applied


def pick_device(requested: str) -> str:
    """auto -> cuda, mps or cpu, whichever this machine has; a named device must exist."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device {requested} requested but no CUDA GPU is available", key="model.device")
    return requested


def bf16_ok(device: str) -> bool:
    """Whether `device` computes in bfloat16: the one rule behind every `auto` dtype/precision."""
    import torch

    return device.startswith("cuda") and torch.cuda.is_bf16_supported()


def pick_dtype(requested: str, device: str) -> Any:
    """auto -> bfloat16 on GPUs that support it, float32 elsewhere."""
    import torch

    if requested == "auto":
        return torch.bfloat16 if bf16_ok(device) else torch.float32
    return getattr(torch, requested)


def load_model(
    ref: ModelRef,
    recipe: RecipeBase,
    *,
    head: Head,
    key: str = "model",
    labels: list[str] | None = None,
    corpus: Iterable[str] = (),
    for_training: bool = False,
    method: str | None = None,
    empty_weights: bool = False,
) -> LoadedModel:
    """Load the model `ref` names with the right head, on its device, adapter applied.

    `method` is the recipe's `method.type` when training (qlora loads the base in 4-bit NF4).
    On the CPU torch runs `ref.threads` threads; `quantization: int8` (inference only) swaps the
    linear layers for dynamic int8 ones after loading (`llmtune.models.cpu`).
    `empty_weights`: build the model on the meta device from its config (no weights read, no
    memory), for a dry run that only counts parameters; scratch models are built normally.
    The model's files are checked first (`info.inspect_model`): a wrong model is BadInput.
    """
    from transformers import set_seed

    device = pick_device(int8_device(ref.device, ref.quantization))
    quantization = quantization_for(ref, method)
    if quantization == "int8":
        check_int8(device, for_training=for_training, key=key)
    use_threads(ref.threads, device)
    set_seed(recipe.seed)  # new heads and scratch weights are initialised the same on every run
    if ref.scratch is not None:
        if method == "qlora":
            raise BadInput(
                "qlora trains adapters on a base model quantized to 4 bits; a scratch model has no "
                "pretrained base to quantize: use method.type: lora",
                key="method.type",
            )
        tokenizer = build_tokenizer(ref.scratch, corpus)
        model = build_scratch_model(ref.scratch, tokenizer, head=head, labels=labels, key=key)
        model.to(device)
        model = quantize_int8(model) if quantization == "int8" else model
        return LoadedModel(model, tokenizer, ref.describe(), device)
    _check_hardware(ref, quantization, device, key)
    found = inspect_model(ref, recipe, key)
    assert found.path is not None and found.tokenizer_dir is not None
    tokenizer = _load_tokenizer(found.tokenizer_dir, ref)
    head_kwargs = _head_kwargs(head, labels)
    if empty_weights:
        model = _empty_model(str(found.path), ref, head, head_kwargs)
    else:
        kwargs = {**pretrained_kwargs(ref, device, method), **head_kwargs}
        model = _load_pretrained(str(found.path), head, kwargs, key)
    if head == "classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    from llmtune.models.adapters import is_adapter_folder, load_adapter_layers

    if found.adapter is not None and is_adapter_folder(found.adapter):
        model = load_adapter_layers(model, found.adapter, empty_weights=empty_weights)
    elif found.adapter is not None:
        model = _apply_adapter(model, found.adapter, for_training, empty_weights)
    if quantization in ("none", "int8") and not empty_weights:
        model.to(device)
    base_path = str(found.path) if found.adapter is not None else None
    if quantization == "int8" and not empty_weights:  # a dry run's meta model has no weights
        model = quantize_int8(model)
    return LoadedModel(model, tokenizer, ref.describe(), device, base_path=base_path)


def inspect_model(ref: ModelRef, recipe: RecipeBase, key: str, *, deep: bool = True) -> ModelInfo:
    """`info.inspect_model`, adapter-layer folders (`llmtune.models.adapters`) included: their
    `path` is the base model's folder and `adapter` the adapter folder."""
    names = [v for v in (ref.adapter, ref.path) if v and ref.scratch is None]
    if any((recipe.resolve_path(v) / "adapter_layers.json").is_file() for v in names):
        from llmtune.models.adapters import inspect_adapter_folder  # imports torch: only when needed

        return inspect_adapter_folder(ref, recipe, key) or info.inspect_model(ref, recipe, key)
    return info.inspect_model(ref, recipe, key, deep=deep)


def quantization_for(ref: ModelRef, method: str | None) -> str:
    """The quantization the base loads with: qlora means 4-bit unless `model.quantization`
    names another."""
    if method == "qlora" and ref.quantization == "none":
        return "4bit"
    return ref.quantization


def pretrained_kwargs(ref: ModelRef, device: str, method: str | None = None) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for `ref` on `device` (head arguments aside): dtype,
    remote code, attention kernel, and bitsandbytes quantization. A pure function, so that the
    arguments a recipe produces can be tested without loading anything."""
    quantization = quantization_for(ref, method)
    dtype = pick_dtype(ref.dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": ref.trust_remote_code}
    if ref.attn_implementation != "auto":
        kwargs["attn_implementation"] = ref.attn_implementation
    if quantization in ("none", "int8"):  # int8 quantizes the float32 model once it is loaded
        return kwargs
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        import torch

        # QLoRA computes in bf16; a GPU without it uses fp16, never fp32 (slow, and 2x memory)
        compute = dtype if ref.dtype != "auto" or dtype == torch.bfloat16 else torch.float16
        kwargs["dtype"] = compute
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    # each process of a torchrun / accelerate launch loads onto its own GPU
    place = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if device == "cuda" else device
    return {**kwargs, "quantization_config": config, "device_map": {"": place}}


def _check_hardware(ref: ModelRef, quantization: str, device: str, key: str) -> None:
    import importlib.util

    if quantization in ("4bit", "8bit"):
        if not device.startswith("cuda"):
            raise BadInput(
                f"quantization {quantization} needs a CUDA GPU (bitsandbytes); this run is on {device}",
                key=f"{key}.quantization",
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise BadInput(
                f"quantization {quantization} needs bitsandbytes: pip install bitsandbytes",
                key=f"{key}.quantization",
            )
    if ref.attn_implementation == "flash_attention_2":
        if not device.startswith("cuda") or importlib.util.find_spec("flash_attn") is None:
            raise BadInput(
                "flash_attention_2 needs a CUDA GPU and the flash-attn package",
                key=f"{key}.attn_implementation",
            )


def _load_tokenizer(folder: Path, ref: ModelRef) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=ref.trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise BadInput(
            f"cannot load the tokenizer: {str(exc).strip().splitlines()[0]}", file=str(folder)
        ) from None
    if tokenizer.pad_token is None:  # decoder-only models often ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _head_kwargs(head: Head, labels: list[str] | None) -> dict[str, Any]:
    if head != "classification" or labels is None:
        return {}
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }


def _auto_class(head: Head) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if head == "classification" else AutoModelForCausalLM


def _load_pretrained(path: str, head: Head, kwargs: dict[str, Any], key: str) -> Any:
    try:
        return _auto_class(head).from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise BadInput(
            f"cannot load {path} as a {head} model: {str(exc).splitlines()[0]}", key=f"{key}.path"
        ) from None


def _empty_model(path: str, ref: ModelRef, head: Head, head_kwargs: dict[str, Any]) -> Any:
    """The model's architecture on the meta device: parameters with shapes, no memory."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=ref.trust_remote_code, **head_kwargs)
    with init_empty_weights():
        model = _auto_class(head).from_config(config, trust_remote_code=ref.trust_remote_code)
    model.tie_weights()  # init_empty_weights leaves tied embeddings as two tensors: counted twice
    return model


def _apply_adapter(model: Any, adapter: Path, for_training: bool, empty_weights: bool) -> Any:
    from peft import PeftConfig, PeftModel, get_peft_model

    if empty_weights:  # the same adapter layers, freshly initialised: its weights are not read
        config = PeftConfig.from_pretrained(str(adapter))
        config.inference_mode = not for_training
        return get_peft_model(model, config)
    try:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=for_training)
    except (TypeError, ValueError, KeyError) as exc:
        raise BadInput(
            f"cannot apply this adapter: {exc}", file=str(adapter / "adapter_config.json")
        ) from None
    except RuntimeError as exc:  # weights of another shape: trained on another base model
        if "size mismatch" not in str(exc):
            raise
        raise BadInput(
            f"the adapter does not fit its base model: {str(exc).strip().splitlines()[-1].strip()}",
            file=str(adapter),
        ) from None


def merged_for_inference(model: Any) -> Any:
    """A LoRA-style adapter folded into the weights: same outputs, no per-layer adapter cost.
    Safe when the engine owns the model; methods that cannot merge run unmerged."""
    if not hasattr(model, "merge_and_unload"):
        return model
    try:
        return model.merge_and_unload()
    except (AttributeError, ValueError, NotImplementedError, TypeError):
        return model


def quiet_libraries(debug: bool) -> None:
    """Keep library warnings and progress bars out of the user's way unless debugging."""
    if debug:
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import transformers
    from datasets.utils.logging import disable_progress_bar, set_verbosity_error

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    set_verbosity_error()
    disable_progress_bar()
    warnings.filterwarnings("ignore")
