"""Loading models for every job: hub ids through the local cache, local folders, adapters,
quantization, and small models built from scratch with a tokenizer that needs no download."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmtune.errors import BadInput
from llmtune.recipes.common import ModelRef, RecipeBase, ScratchModel

Head = Literal["causal_lm", "classification"]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


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


def pick_dtype(requested: str, device: str) -> Any:
    """auto -> bfloat16 on GPUs that support it, float32 elsewhere."""
    import torch

    if requested == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, requested)


def resolve_model_path(ref: ModelRef, recipe: RecipeBase, key: str) -> str:
    """A local folder (relative to the recipe) or a hub id found in the local HF cache.

    Raises BadInput saying where it looked when neither has the model.
    """
    assert ref.path is not None
    local = recipe.resolve_path(ref.path)
    if local.is_dir():
        return str(local)
    if local.exists():
        raise BadInput(f"{local} is a file; expected a model folder or a hub id", key=f"{key}.path")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE, HF_HUB_OFFLINE

    looked = f"looked in {local} and in the Hugging Face cache {HF_HUB_CACHE}"
    if ref.path.count("/") > 1 or ref.path.startswith((".", "/", "~")):
        raise BadInput(f"model folder not found: {local} ({looked})", key=f"{key}.path")
    try:
        return snapshot_download(ref.path, revision=ref.revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: fall through to the hub or refuse
        pass
    if HF_HUB_OFFLINE:
        raise BadInput(
            f"model {ref.path!r} not found: {looked}; the hub is off (HF_HUB_OFFLINE=1)", key=f"{key}.path"
        )
    try:
        return snapshot_download(ref.path, revision=ref.revision)
    except Exception as exc:  # noqa: BLE001 - any hub failure means we cannot get the model
        raise BadInput(
            f"model {ref.path!r} not found: {looked}, and the hub answered: {type(exc).__name__}",
            key=f"{key}.path",
        ) from None


def load_model(
    ref: ModelRef,
    recipe: RecipeBase,
    *,
    head: Head,
    key: str = "model",
    labels: list[str] | None = None,
    corpus: Iterable[str] = (),
    for_training: bool = False,
) -> LoadedModel:
    """Load the model `ref` names with the right head, on its device, adapter applied."""
    from transformers import set_seed

    device = pick_device(ref.device)
    _check_hardware(ref, device, key)
    set_seed(recipe.seed)  # new heads and scratch weights are initialised the same on every run
    if ref.scratch is not None:
        tokenizer = build_tokenizer(ref.scratch, corpus)
        model = build_scratch_model(ref.scratch, tokenizer, head=head, labels=labels, key=key)
        model.to(device)
        return LoadedModel(model, tokenizer, ref.describe(), device)
    path = resolve_model_path(ref, recipe, key)
    adapter = recipe.resolve_path(ref.adapter) if ref.adapter else None
    base_path = path
    if adapter is None and (Path(path) / "adapter_config.json").exists():
        adapter, base_path = Path(path), adapter_base(Path(path), recipe, key)
    tokenizer = _load_tokenizer(path if adapter is None else str(adapter), base_path, ref)
    model = _load_pretrained(
        base_path, ref, head=head, labels=labels, device=device, key=key, pad_token_id=tokenizer.pad_token_id
    )
    if adapter is not None:
        from peft import PeftModel

        if not (adapter / "adapter_config.json").exists():
            raise BadInput(
                f"no PEFT adapter in {adapter} (adapter_config.json missing)", key=f"{key}.adapter"
            )
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=for_training)
    if ref.quantization == "none":
        model.to(device)
    return LoadedModel(
        model, tokenizer, ref.describe(), device, base_path=base_path if adapter is not None else None
    )


def adapter_base(adapter: Path, recipe: RecipeBase, key: str) -> str:
    """The base model an adapter folder was trained on (a `base/` folder beside it wins)."""
    if (adapter / "base" / "config.json").exists():
        return str(adapter / "base")
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise BadInput(f"{adapter}/adapter_config.json names no base model", key=f"{key}.path")
    return resolve_model_path(ModelRef(path=base), recipe, key)


def _check_hardware(ref: ModelRef, device: str, key: str) -> None:
    import importlib.util

    if ref.quantization != "none":
        if not device.startswith("cuda"):
            raise BadInput(
                f"quantization {ref.quantization} needs a CUDA GPU (bitsandbytes); this run is on {device}",
                key=f"{key}.quantization",
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise BadInput(
                "quantization needs bitsandbytes: pip install bitsandbytes", key=f"{key}.quantization"
            )
    if ref.attn_implementation == "flash_attention_2":
        if not device.startswith("cuda") or importlib.util.find_spec("flash_attn") is None:
            raise BadInput(
                "flash_attention_2 needs a CUDA GPU and the flash-attn package",
                key=f"{key}.attn_implementation",
            )


def _load_tokenizer(path: str, fallback: str, ref: ModelRef) -> Any:
    from transformers import AutoTokenizer

    source = path if (Path(path) / "tokenizer_config.json").exists() else fallback
    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=ref.revision if source == fallback else None, trust_remote_code=ref.trust_remote_code
    )
    if tokenizer.pad_token is None:  # decoder-only models often ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_pretrained(
    path: str,
    ref: ModelRef,
    *,
    head: Head,
    labels: list[str] | None,
    device: str,
    key: str,
    pad_token_id: int | None,
) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {
        "dtype": pick_dtype(ref.dtype, device),
        "trust_remote_code": ref.trust_remote_code,
    }
    if ref.attn_implementation != "auto":
        kwargs["attn_implementation"] = ref.attn_implementation
    if ref.quantization != "none":
        kwargs.update(_quantization_kwargs(ref, device))
    if head == "classification":
        cls = AutoModelForSequenceClassification
        if labels is not None:
            kwargs.update(
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={name: i for i, name in enumerate(labels)},
            )
    else:
        cls = AutoModelForCausalLM
    try:
        model = cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise BadInput(
            f"cannot load {path} as a {head} model: {str(exc).splitlines()[0]}", key=f"{key}.path"
        ) from None
    if head == "classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model


def _quantization_kwargs(ref: ModelRef, device: str) -> dict[str, Any]:
    import torch
    from transformers import BitsAndBytesConfig

    if ref.quantization == "4bit":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=pick_dtype(ref.dtype, device) if ref.dtype != "float32" else torch.float32,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": config, "device_map": {"": device}}


def build_tokenizer(spec: ScratchModel, corpus: Iterable[str]) -> Any:
    """A byte-level tokenizer (no download), or a BPE one trained on `corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if spec.tokenizer == "byte":
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        vocab = {token: i for i, token in enumerate(SPECIALS + alphabet)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        tok.pre_tokenizer = byte_level
    else:
        texts = [t for t in corpus if t]
        if not texts:
            raise BadInput(
                "scratch.tokenizer: train needs training text in data.train", key="model.scratch.tokenizer"
            )
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = byte_level
        trainer = trainers.BpeTrainer(
            vocab_size=spec.vocab_size,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
    tok.decoder = decoders.ByteLevel()
    if spec.architecture == "bert":
        single, pair = "<s> $A </s>", "<s> $A </s> $B:1 </s>:1"
    else:
        single, pair = "<s> $A", "<s> $A $B:1"
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=spec.max_position_embeddings,
    )
    if spec.architecture == "bert":
        tokenizer.cls_token, tokenizer.sep_token = "<s>", "</s>"
    return tokenizer


def build_scratch_model(
    spec: ScratchModel, tokenizer: Any, *, head: Head, labels: list[str] | None, key: str = "model"
) -> Any:
    """A randomly initialised llama / gpt2 / bert of the requested size."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        BertConfig,
        GPT2Config,
        LlamaConfig,
    )

    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if labels is not None:
        common.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    inner = spec.intermediate_size or 4 * spec.hidden_size
    if spec.architecture == "llama":
        config = LlamaConfig(
            hidden_size=spec.hidden_size,
            intermediate_size=inner,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_heads,
            max_position_embeddings=spec.max_position_embeddings,
            tie_word_embeddings=True,
            **common,
        )
    elif spec.architecture == "gpt2":
        config = GPT2Config(
            n_embd=spec.hidden_size,
            n_layer=spec.num_layers,
            n_head=spec.num_heads,
            n_inner=inner,
            n_positions=spec.max_position_embeddings,
            **common,
        )
    else:
        if head == "causal_lm":
            raise BadInput(
                "bert is an encoder and cannot be a causal LM; use llama or gpt2",
                key=f"{key}.scratch.architecture",
            )
        config = BertConfig(
            hidden_size=spec.hidden_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            intermediate_size=inner,
            max_position_embeddings=spec.max_position_embeddings,
            **common,
        )
    cls = AutoModelForSequenceClassification if head == "classification" else AutoModelForCausalLM
    return cls.from_config(config)


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
