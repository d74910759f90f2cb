"""Which earlier runs a run continues (sequential fine-tuning), read from their manifests: the
`lineage` that a run's manifest.json records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llmtune.provenance import read_manifest
from llmtune.recipes.common import ModelRef, RecipeBase


def lineage(recipe: RecipeBase) -> list[dict[str, Any]]:
    """The earlier runs this one continues, oldest first: when `model.path` (or `model.adapter`)
    is the model/ folder of an llmtune run, that run's own lineage and then that run."""
    ref = getattr(recipe, "model", None)
    if not isinstance(ref, ModelRef) or ref.scratch is not None:
        return []
    for folder in [recipe.resolve_path(v) for v in (ref.adapter, ref.path) if v]:
        earlier = read_manifest(folder.parent)
        if earlier is None or not (folder / "config.json").exists():
            continue
        keys = {
            "name": "name",
            "kind": "kind",
            "recipe_file": "recipe_file",
            "status": "status",
            "finished": "ended",
        }
        step = {"run_dir": str(folder.parent.resolve()), **{k: earlier.get(v) for k, v in keys.items()}}
        step["method"] = _method_of(folder.parent)
        history = earlier.get("lineage")
        return [*(history if isinstance(history, list) else []), step]
    return []


def _method_of(run: Path) -> str | None:
    try:
        method = (yaml.safe_load((run / "recipe.yaml").read_text()) or {}).get("method")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return method.get("type") if isinstance(method, dict) else None
