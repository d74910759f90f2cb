"""`llmtune env`: what a bug report needs to know about this machine."""

from __future__ import annotations

import platform
from typing import Any

from llmtune import __version__
from llmtune.runs.rundir import library_versions


def describe_environment() -> dict[str, Any]:
    """Versions of python and the libraries, and the devices torch can see."""
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
    return info
