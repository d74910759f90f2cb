"""The one place that turns a recipe's `engine:` into an engine. Adding an engine means adding
its module under `llmtune.inference` (with `open_engine(request)`, and `require(key)` when it
needs an extra) and one line in `ENGINES`.

Engine modules are imported here by name, only when chosen, so a job that runs no model (a
cron rerun with nothing new) imports no runtime at all.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from llmtune.errors import BadInput
from llmtune.inference.interface import EngineRequest, InferenceEngine


@dataclass(frozen=True)
class EngineEntry:
    """One engine: the module that implements it, and what it serves."""

    module: str
    """Module under llmtune.inference with `open_engine(request) -> InferenceEngine`."""
    heads: frozenset[str]
    """Model heads it serves: causal_lm and/or classification (regression heads included)."""
    summary: str


ENGINES: dict[str, EngineEntry] = {
    "hf": EngineEntry(
        "llmtune.inference.engine",
        frozenset({"causal_lm", "classification"}),
        "transformers in this process",
    ),
    "vllm": EngineEntry("llmtune.inference.vllm_engine", frozenset({"causal_lm"}), "vLLM's offline LLM"),
    "onnx": EngineEntry(
        "llmtune.inference.onnx_engine",
        frozenset({"causal_lm", "classification"}),
        "ONNX Runtime on an exported model",
    ),
    "llamacpp": EngineEntry(
        "llmtune.inference.llamacpp_engine", frozenset({"causal_lm"}), "llama.cpp on a GGUF file"
    ),
}


def entry(name: str, key: str = "engine") -> EngineEntry:
    """The registry entry for `name`; BadInput for an engine llmtune does not have."""
    if name not in ENGINES:
        raise BadInput(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}", key=key)
    return ENGINES[name]


def _module(name: str) -> Any:
    return importlib.import_module(entry(name).module)


def require(name: str, key: str = "engine") -> None:
    """BadInput (exit 2, before anything is written) naming the extra to install when the
    engine's runtime is missing; nothing for engines that need none."""
    check = getattr(_module(name), "require", None)
    if check is not None:
        check(key)


def check_head(name: str, head: str | None, path: str | None = None, key: str = "engine") -> None:
    """BadInput when the engine cannot serve a model with this head (or this model file: the
    engine module's own `check_model(head, path, key)` when it has one)."""
    own = getattr(_module(name), "check_model", None)
    if own is not None:
        own(head, path, key)
        return
    if head not in entry(name).heads:
        served = " and ".join(sorted(entry(name).heads))
        raise BadInput(f"engine: {name} serves {served} models; this one is {head}", key=key)


def check_task(name: str, task: str, key: str = "task") -> None:
    """BadInput for a task the engine cannot do (the engine module's `check_task`, if any)."""
    own = getattr(_module(name), "check_task", None)
    if own is not None:
        own(task, key)


def inspect(name: str, ref: Any, recipe: Any, key: str = "model") -> Any:
    """The engine's own ModelInfo for a model in its own format (an ONNX folder, a GGUF file),
    or None: then the model is inspected as a transformers model."""
    own = getattr(_module(name), "inspect_model", None)
    return own(ref, recipe, key) if own is not None else None


def int8_runtime(name: str, ref: Any, head: str | None) -> str:
    """The engine that serves `model.quantization: int8` asked of engine `name`: a classification
    or regression head on engine hf runs ONNX Runtime's dynamic int8 when it is installed (3.7x
    float32 torch against torch's dynamic int8 at 1.7x, bench/results/int8_paths.md); causal LMs,
    which ONNX Runtime does not generate with here, keep torch's."""
    if name != "hf" or getattr(ref, "quantization", None) != "int8" or head != "classification":
        return name
    import importlib.util

    installed = (
        importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    )
    return "onnx" if installed else name


def open_engine(name: str, request: EngineRequest) -> InferenceEngine:
    """The engine `name` over the model `request` describes."""
    return _module(name).open_engine(request)


def over_loaded(name: str, loaded: Any, **request: Any) -> InferenceEngine:
    """Engine `name` over a model a job has loaded already (evaluation during training, a
    teacher): `request` holds EngineRequest's fields beyond `loaded` (ref and recipe default to
    none, which engine hf does not need)."""
    request.setdefault("ref", None)
    request.setdefault("recipe", None)
    return open_engine(name, EngineRequest(loaded=loaded, **request))
