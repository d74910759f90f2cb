"""Adapter layers (`method.type: adapter`): small bottleneck layers (down-projection,
non-linearity, up-projection) added to every transformer block, serial after the attention and/or
feed-forward output (Houlsby / Pfeiffer) or parallel beside the feed-forward block (He et al.).

peft has no such method and the `adapters` library is pinned to transformers 4, so this is ours,
kept small: the bottlenecks hang off each block's existing modules through forward hooks, so the
base model's weights and their names are untouched, and all adapter weights live under one
attribute of the model (`llmtune_adapters`). The up-projection starts at zero: before training
the model computes exactly what the base does.

A trained model is saved as a folder that names its base (like a peft adapter), with the adapter
and head weights in ADAPTER_WEIGHTS and their settings in ADAPTER_CONFIG; `load_adapter_folder`
puts them back. They are non-linear, so they cannot be merged into the base weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmtune.errors import BadInput
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
ROOT = "llmtune_adapters"  # the model attribute that holds every adapter set
# the task head, trained beside the adapters (lm_head stays frozen: it is tied to the embeddings);
# a pretrained pooler stays frozen too, but is saved with the head, as a base may lack one
TRAINED_HEADS = ("classifier", "score", "pre_classifier")
SAVED_HEADS = (*TRAINED_HEADS, "pooler")
BLOCK_LISTS = ("layers", "h", "layer", "blocks")
# where each block's attention output is (its output is the sublayer's, before the residual add)
ATTENTION_OUTPUTS = (
    "self_attn.o_proj",  # llama, mistral, qwen2, gemma, phi3
    "attn.c_proj",  # gpt2
    "attention.output.dense",  # bert, roberta, electra
    "attention.out_lin",  # distilbert
    "self_attention.dense",  # falcon, bloom
    "attn.out_proj",  # gpt-neo
    "self_attn.out_proj",  # opt, bart
)
# the feed-forward block as one module: its input is the block's (normed) hidden state
FEED_FORWARDS = ("mlp", "feed_forward", "ffn")
# bert-style split feed-forward: (module taking its input, module giving its output)
SPLIT_FEED_FORWARDS = (("intermediate", "output.dense"),)
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass
class AdapterSettings:
    """One set of adapter layers as saved: what `MethodSpec` said, and the width it had."""

    reduction_factor: int
    placement: str
    sites: list[str]
    non_linearity: str
    scaling: float

    @classmethod
    def of(cls, method: MethodSpec) -> AdapterSettings:
        """The adapter settings of a recipe's method."""
        return cls(
            method.reduction_factor,
            method.placement,
            list(method.sites),
            method.non_linearity,
            method.scaling,
        )


class Bottleneck(nn.Module):
    """down-projection -> non-linearity -> up-projection, times `scaling`; the up-projection
    starts at zero so that the adapter adds nothing until it has trained."""

    def __init__(self, hidden: int, settings: AdapterSettings, like: torch.Tensor) -> None:
        super().__init__()
        width = max(1, hidden // settings.reduction_factor)
        kwargs = {"device": like.device, "dtype": like.dtype}
        self.down = nn.Linear(hidden, width, **kwargs)
        self.act = ACTIVATIONS[settings.non_linearity]()
        self.up = nn.Linear(width, hidden, **kwargs)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scaling = settings.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x))) * self.scaling


class Site(nn.Module):
    """One bottleneck at one place of a block, and the hooks that put it there. The hooks are
    bound methods (not closures) so that a deep copy of the model calls the copied bottleneck."""

    def __init__(self, bottleneck: Bottleneck) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        self._pending: torch.Tensor | None = None

    def serial(self, module: nn.Module, args: Any, output: Any) -> Any:
        """After a sublayer: h + adapter(h) on its output (before the block's residual add)."""
        return _on_hidden(output, lambda h: h + self.bottleneck(h))

    def remember_input(self, module: nn.Module, args: Any) -> None:
        """Parallel: the feed-forward block's input, for the adapter beside it."""
        self._pending = self.bottleneck(args[0])

    def parallel(self, module: nn.Module, args: Any, output: Any) -> Any:
        """Parallel: FFN(x) + adapter(x), x being the input the feed-forward block got."""
        pending, self._pending = self._pending, None
        return _on_hidden(output, lambda h: h + pending)


def _on_hidden(output: Any, change: Any) -> Any:
    if isinstance(output, tuple):  # some blocks return (hidden, extras)
        return (change(output[0]), *output[1:])
    return change(output)


class AdapterSet(nn.Module):
    """The adapter layers one run trained: a Site per block and place, hooked into the model."""

    def __init__(self, settings: AdapterSettings) -> None:
        super().__init__()
        self.settings = settings
        self.sites = nn.ModuleDict()
        self.handles: list[Any] = []

    def install(self, model: nn.Module) -> None:
        """Create the bottlenecks and hook them into every block of `model`."""
        blocks = transformer_blocks(model)
        hidden = _hidden_size(model)
        like = next(model.parameters())
        for index, block in enumerate(blocks):
            places = find_places(block, model)
            if self.settings.placement == "parallel":
                site = self._site(f"{index}_parallel", hidden, like)
                self.handles.append(places["feed_forward_in"].register_forward_pre_hook(site.remember_input))
                self.handles.append(places["feed_forward_out"].register_forward_hook(site.parallel))
                continue
            for where in self.settings.sites:
                site = self._site(f"{index}_{where}", hidden, like)
                target = places["attention"] if where == "attention" else places["feed_forward_out"]
                self.handles.append(target.register_forward_hook(site.serial))

    def _site(self, name: str, hidden: int, like: torch.Tensor) -> Site:
        self.sites[name] = Site(Bottleneck(hidden, self.settings, like))
        return self.sites[name]


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks (layers / h / layer / blocks): the longest one."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in BLOCK_LISTS and ROOT not in name:
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise BadInput(
            f"cannot find the transformer blocks of this {_architecture(model)} model", key="method.type"
        )
    return best


def find_places(block: nn.Module, model: nn.Module) -> dict[str, nn.Module]:
    """A block's attention output and its feed-forward input and output modules."""
    modules = dict(block.named_modules())
    attention = next((modules[n] for n in ATTENTION_OUTPUTS if n in modules), None)
    ffn = next((modules[n] for n in FEED_FORWARDS if n in modules), None)
    ffn_in = ffn_out = ffn
    if ffn is None:
        split = next(((a, b) for a, b in SPLIT_FEED_FORWARDS if a in modules and b in modules), None)
        if split is not None:
            ffn_in, ffn_out = modules[split[0]], modules[split[1]]
    if attention is None or ffn_in is None or ffn_out is None:
        raise BadInput(
            f"adapter layers cannot be added to a {_architecture(model)} model: its blocks have no "
            f"attention output ({' / '.join(ATTENTION_OUTPUTS)}) or feed-forward block "
            f"({' / '.join(FEED_FORWARDS)}) that llmtune knows; use method.type: lora",
            key="method.type",
        )
    return {"attention": attention, "feed_forward_in": ffn_in, "feed_forward_out": ffn_out}


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise BadInput(f"cannot tell the hidden size of this {_architecture(model)} model", key="method.type")


def _architecture(model: nn.Module) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__)


def adapter_sets(model: nn.Module) -> list[AdapterSet]:
    """The adapter sets in `model`, oldest first (empty when it has none)."""
    root = getattr(model, ROOT, None)
    return list(root) if root is not None else []


def add_adapter_layers(model: nn.Module, settings: AdapterSettings) -> AdapterSet:
    """Add one set of adapter layers to every block of `model` (on top of any earlier sets)."""
    if not hasattr(model, ROOT):
        model.add_module(ROOT, nn.ModuleList())
    adapter_set = AdapterSet(settings)
    adapter_set.install(model)
    getattr(model, ROOT).append(adapter_set)
    return adapter_set


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
        "architecture": _architecture(model),
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
