"""Saving trained models so that plain transformers + peft can load them, and `llmtune export`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput
from llmtune.models import LoadedModel
from llmtune.recipes.common import RecipeBase


def save_trained_model(
    model: Any,
    loaded: LoadedModel,
    target: Path,
    recipe: RecipeBase,
    labels: list[str] | None = None,
    merge: bool = False,
) -> Path:
    """Write model/ atomically: weights or adapter, tokenizer, and the config (with id2label).

    An adapter trained on a scratch base gets that base saved beside it in model/base, because
    the random base weights exist nowhere else.
    """
    from peft import PeftModel

    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    is_peft = isinstance(model, PeftModel)
    if is_peft and merge:
        model, is_peft = model.merge_and_unload(), False
    model.save_pretrained(str(tmp))
    loaded.tokenizer.save_pretrained(str(tmp))
    if is_peft:
        base = model.get_base_model()
        base.config.save_pretrained(str(tmp))  # id2label/num_labels for anyone loading the adapter
        if getattr(recipe, "model", None) is not None and recipe.model.scratch is not None:
            _save_base(model, tmp / "base", loaded)
            _point_adapter_at(tmp, (target / "base").resolve())
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def _save_base(peft_model: Any, folder: Path, loaded: LoadedModel) -> None:
    # unload() returns the base with the adapter layers removed (weights untouched)
    import copy

    base = copy.deepcopy(peft_model).unload()
    base.save_pretrained(str(folder))
    loaded.tokenizer.save_pretrained(str(folder))


def _point_adapter_at(folder: Path, base: Path) -> None:
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base)
    config_path.write_text(json.dumps(config, indent=2))


def export_model(run: Path, output: Path, merge: bool = False) -> Path:
    """`llmtune export`: copy or merge a run's model into a standalone folder."""
    raise BadInput("export is built in issue 3", key=str(run))
