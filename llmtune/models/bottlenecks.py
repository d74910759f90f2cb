"""The bottleneck modules of adapter layers (`method.type: adapter`), where they hang in a
transformer block, and the forward hooks that put them there. `llmtune.models.adapters` trains,
saves and loads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmtune.errors import BadInput
from llmtune.recipes.methods import MethodSpec

ROOT = "llmtune_adapters"  # the model attribute that holds every adapter set
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
            f"cannot find the transformer blocks of this {architecture_of(model)} model", key="method.type"
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
            f"adapter layers cannot be added to a {architecture_of(model)} model: its blocks have no "
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
    raise BadInput(f"cannot tell the hidden size of this {architecture_of(model)} model", key="method.type")


def architecture_of(model: nn.Module) -> str:
    """The model's type as its config names it (llama, bert, ...), else its class name."""
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
