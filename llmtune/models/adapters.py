"""Adapter layers (`method.type: adapter`): small bottleneck layers (down-projection,
non-linearity, up-projection) added to every transformer block, serial after the attention and/or
feed-forward output (Houlsby / Pfeiffer) or parallel beside the feed-forward block (He et al.).

peft has no such method and the `adapters` library is pinned to transformers 4, so this is ours,
kept small: the bottlenecks hang off each block's existing modules through forward hooks, so the
base model's weights and their names are untouched, and all adapter weights live under one
attribute of the model (`llmtune_adapters`). The up-projection starts at zero: before training
the model computes exactly what the base does. The modules, and where they hang in a block, are
`llmtune.models.bottlenecks`; this module trains, saves and loads them.

A trained model is saved as a folder that names its base (like a peft adapter), with the adapter
and head weights in ADAPTER_WEIGHTS and their settings in ADAPTER_CONFIG; `load_adapter_folder`
puts them back. They are non-linear, so they cannot be merged into the base weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from llmtune.errors import BadInput
from llmtune.models.bottlenecks import (
    ROOT,
    AdapterSet,
    AdapterSettings,
    adapter_sets,
    add_adapter_layers,
    architecture_of,
)
from llmtune.models.info import (
    ModelInfo,
    check_model_folder,
    check_tokenizer,
    has_tokenizer,
    head_of,
    named_labels,
    read_config,
    resolve_model_path,
)
from llmtune.recipes.common import ModelRef, RecipeBase
from llmtune.recipes.methods import MethodSpec

ADAPTER_CONFIG = "adapter_layers.json"
ADAPTER_WEIGHTS = "adapter_layers.safetensors"
FORMAT = "llmtune-adapter-layers"
# the task head, trained beside the adapters (lm_head stays frozen: it is tied to the embeddings);
# a pretrained pooler stays frozen too, but is saved with the head, as a base may lack one
TRAINED_HEADS = ("classifier", "score", "pre_classifier")
SAVED_HEADS = (*TRAINED_HEADS, "pooler")


def train_only(model: nn.Module, adapter_set: AdapterSet, head: str) -> nn.Module:
    """Freeze everything but `adapter_set` and, for a classification or regression head, the head."""
    for p in model.parameters():
        p.requires_grad = False
    for p in adapter_set.parameters():
        p.requires_grad = True
    if head != "causal_lm":
        for module in head_modules(model, TRAINED_HEADS).values():
            for p in module.parameters():
                p.requires_grad = True
    return model


def apply_adapter_layers(model: nn.Module, method: MethodSpec, head: str) -> nn.Module:
    """`method.type: adapter`: new adapter layers on `model`, the only weights (with the head)
    that train. On a model that has adapter layers already (model.path is an earlier adapter run),
    `method.stack` false trains the newest set further; true freezes them and adds a new set."""
    sets = adapter_sets(model)
    if sets and not method.stack:
        return train_only(model, sets[-1], head)
    return train_only(model, add_adapter_layers(model, AdapterSettings.of(method)), head)


def head_modules(model: nn.Module, names: tuple[str, ...] = SAVED_HEADS) -> dict[str, nn.Module]:
    """The task head's modules by name (classifier, score, ...; never lm_head)."""
    return {
        name: module
        for name, module in model.named_modules()
        if name.split(".")[-1] in names and ROOT not in name
    }


# ---------------------------------------------------------------- saving and loading
def save_adapter_folder(model: nn.Module, folder: Path, base: str, revision: str | None) -> None:
    """Write the adapter sets' and the head's weights (safetensors) and ADAPTER_CONFIG naming the
    base model, in `folder` (the caller writes the tokenizer and config.json beside them)."""
    from safetensors.torch import save_file

    weights = {f"{ROOT}.{k}": v for k, v in getattr(model, ROOT).state_dict().items()}
    for name, module in head_modules(model).items():
        weights.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(folder / ADAPTER_WEIGHTS))
    config = {
        "format": FORMAT,
        "base_model_name_or_path": base,
        "revision": revision,
        "architecture": architecture_of(model),
        "adapters": [asdict(s.settings) for s in adapter_sets(model)],
        "note": "adapter layers are non-linear and cannot be merged into the base weights; load "
        "this folder with llmtune (model.path) or llmtune.models.adapters.load_adapter_folder",
    }
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def is_adapter_folder(folder: Path) -> bool:
    """Whether `folder` holds adapter layers that llmtune saved."""
    return (folder / ADAPTER_CONFIG).is_file()


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """ADAPTER_CONFIG of an adapter folder, checked (BadInput naming the file)."""
    file = folder / ADAPTER_CONFIG
    config = read_config(file)
    adapters = config.get("adapters")
    if config.get("format") != FORMAT or not isinstance(adapters, list) or not adapters:
        raise BadInput(f"not an llmtune adapter-layers config (format {FORMAT!r}, adapters)", file=str(file))
    try:
        [AdapterSettings(**a) for a in adapters]
    except TypeError as exc:
        raise BadInput(f"bad adapter settings: {exc}", file=str(file)) from None
    if not isinstance(config.get("base_model_name_or_path"), str):
        raise BadInput("names no base model (base_model_name_or_path)", file=str(file))
    return config


def adapter_folder_of(ref: ModelRef, recipe: RecipeBase) -> Path | None:
    """The adapter-layers folder `ref` names (model.adapter, or model.path itself), or None."""
    if ref.scratch is not None:
        return None
    for value in (ref.adapter, ref.path):
        if value and is_adapter_folder(recipe.resolve_path(value)):
            return recipe.resolve_path(value)
    return None


def base_of(folder: Path, recipe: RecipeBase, key: str) -> Path:
    """The base model folder an adapter folder was trained on (a `base/` folder beside it wins)."""
    if (folder / "base" / "config.json").exists():
        return folder / "base"
    config = read_adapter_config(folder)
    name = config["base_model_name_or_path"]
    try:
        revision = {"revision": config["revision"]} if config.get("revision") else {}
        return Path(resolve_model_path(ModelRef(path=name, **revision), recipe, key))
    except BadInput as exc:
        raise BadInput(
            f"the adapter's base model {name!r} cannot be found: {exc}", file=str(folder / ADAPTER_CONFIG)
        ) from None


def inspect_adapter_folder(ref: ModelRef, recipe: RecipeBase, key: str) -> ModelInfo | None:
    """What `info.inspect_model` tells of a model, for an adapter-layers folder (None if `ref`
    names none): its base checked, its head and labels from the config.json saved beside it."""
    folder = adapter_folder_of(ref, recipe)
    if folder is None:
        return None
    read_adapter_config(folder)
    base = Path(resolve_model_path(ref, recipe, key)) if ref.adapter else base_of(folder, recipe, key)
    check_model_folder(base, ref)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise BadInput(f"unreadable adapter weights: {exc}", file=str(folder / ADAPTER_WEIGHTS)) from None
    config_file = folder / "config.json" if (folder / "config.json").exists() else base / "config.json"
    config = read_config(config_file)
    check_tokenizer(folder if has_tokenizer(folder) else base, ref)
    architectures = list(config.get("architectures") or [])
    labels = named_labels(config.get("id2label"), config_file)
    return ModelInfo(head_of(architectures), labels, architectures, base, folder)


def load_adapter_layers(model: nn.Module, folder: Path, *, empty_weights: bool = False) -> nn.Module:
    """Put the adapter sets saved in `folder` (and its trained head) on `model`, frozen."""
    from safetensors.torch import load_file

    config = read_adapter_config(folder)
    for settings in config["adapters"]:
        add_adapter_layers(model, AdapterSettings(**settings))
    for p in model.parameters():
        p.requires_grad = False
    if empty_weights:
        return model
    weights = load_file(str(folder / ADAPTER_WEIGHTS))
    expected = set(model.state_dict())
    unknown = sorted(set(weights) - expected)
    missing = sorted(k for k in expected if k.startswith(f"{ROOT}.") and k not in weights)
    if unknown or missing:
        raise BadInput(
            f"the adapter weights do not fit the model: unknown {unknown[:3]}, missing {missing[:3]}",
            file=str(folder / ADAPTER_WEIGHTS),
        )
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # another shape: trained on another base model
        raise BadInput(
            f"the adapter weights do not fit the base model: {str(exc).strip().splitlines()[-1].strip()}",
            file=str(folder / ADAPTER_WEIGHTS),
        ) from None
    return model


def load_adapter_folder(folder: str | Path) -> tuple[nn.Module, Any]:
    """(model, tokenizer) of an adapter-layers folder, in Python: the base model it names, with
    the trained head and adapter layers on it, ready for inference."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    folder = Path(folder)
    config = AutoConfig.from_pretrained(str(folder))
    classifier = head_of(config.architectures or []) == "classification"
    cls = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    head = {"num_labels": config.num_labels, "id2label": config.id2label} if classifier else {}
    base = base_of(folder, RecipeBase(kind="adapter"), "model.path")
    model = cls.from_pretrained(str(base), **head)
    load_adapter_layers(model, folder)
    return model.eval(), AutoTokenizer.from_pretrained(str(folder))
