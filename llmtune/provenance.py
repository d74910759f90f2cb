"""Where a run ran: library versions, the device, the recipe's git commit. Recorded in every run's
manifest (read back by `read_manifest`) and shown by `llmtune env`; a base module, so the runs,
the engines that load a run and `llmtune env` read it without importing each other."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def package_version(package: str) -> str | None:
    """An installed package's version (None when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def device_description() -> str:
    """The accelerator this process can use, or the CPU and its thread count."""
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)} x{torch.cuda.device_count()})"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return f"cpu ({torch.get_num_threads()} threads)"


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries a run depends on."""
    names = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "scikit-learn")
    return {name: package_version(name) for name in names}


def git_commit(folder: Path | None) -> str | None:
    """The commit checked out in `folder`'s git repository (None outside one)."""
    if folder is None:
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest.json an llmtune run wrote in `folder` (any status), or None."""
    try:
        data = json.loads((folder / "manifest.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and {"llmtune", "kind", "status", "started"} <= set(data) else None
