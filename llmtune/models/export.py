"""Saving trained models so that plain transformers + peft can load them.

A model is written to a new folder beside the target under a unique temp name and renamed into
place: readers never see half a model, the files get the user's umask, and a failure removes
only that temp folder. `llmtune export --format hf` (`llmtune.export.hf_format`) writes the same
folders for a finished run.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmtune.folders import replace_folder
from llmtune.models.adapters import ADAPTER_CONFIG, save_adapter_folder
from llmtune.models.bottlenecks import adapter_sets
from llmtune.models.loading import LoadedModel
from llmtune.outputs import atomic_write_json
from llmtune.recipes.common import ModelRef, RecipeBase


def snapshot_base(model: Any, recipe: RecipeBase) -> Any | None:
    """A copy of the base model before the method wraps it, when its weights exist nowhere else:
    a scratch model's random ones, or an earlier run's mergeable adapter merged into its base
    (`method.stack: true`), which the new adapter is trained on.

    Hub and local bases are not copied; the adapter names them instead.
    """
    ref = getattr(recipe, "model", None)
    method = getattr(recipe, "method", None)
    if method is not None and method.stack and hasattr(model, "peft_config"):
        from llmtune.models.methods import PEFT_TYPES
        from llmtune.recipes.methods import MERGEABLE

        kinds = {PEFT_TYPES[m] for m in MERGEABLE}
        if str(getattr(model.peft_config["default"].peft_type, "value", "")) in kinds:
            return copy.deepcopy(model).merge_and_unload()
    if ref is None or ref.scratch is None:
        return None
    return copy.deepcopy(model)


def save_trained_model(
    model: Any,
    loaded: LoadedModel,
    target: Path,
    recipe: RecipeBase,
    labels: list[str] | None = None,
    merge: bool = False,
    base: Any | None = None,
) -> Path:
    """Write model/ atomically: weights or adapter, tokenizer, and the config (with id2label).

    An adapter's config names its base as users can load it anywhere: the hub id and revision
    the recipe gave (not this machine's cache folder), or the absolute path of a local model
    folder. An adapter trained on a scratch base gets that base (`base`, the model before the
    method wrapped it) saved beside it in model/base; the adapter config points there.
    """
    from peft import PeftModel

    is_peft = isinstance(model, PeftModel)
    if is_peft and merge:
        model, is_peft = model.merge_and_unload(), False
    if adapter_sets(model):
        return _write_folder(
            target, lambda tmp: _save_adapter_layers(model, loaded, tmp, target, recipe, base)
        )

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        loaded.tokenizer.save_pretrained(str(tmp))
        if not is_peft:
            return
        inner = model.get_base_model()
        inner.config.architectures = [type(inner).__name__]  # scratch configs have none
        inner.config.save_pretrained(str(tmp))  # id2label/num_labels for anyone loading the adapter
        if base is not None:
            base.save_pretrained(str(tmp / "base"))
            loaded.tokenizer.save_pretrained(str(tmp / "base"))
            name_base(tmp, str((target / "base").resolve()), None)
        elif (named := _base_reference(recipe)) is not None:
            name_base(tmp, *named)

    return _write_folder(target, write)


def _save_adapter_layers(
    model: Any, loaded: LoadedModel, tmp: Path, target: Path, recipe: RecipeBase, base: Any | None
) -> None:
    """model/ of an adapter-layers run: their weights and the head's, the settings naming the
    base (as for a peft adapter), the tokenizer, and config.json (head, labels)."""
    model.config.architectures = [type(model).__name__]  # scratch configs have none
    model.config.save_pretrained(str(tmp))
    loaded.tokenizer.save_pretrained(str(tmp))
    if base is not None:
        base.save_pretrained(str(tmp / "base"))
        loaded.tokenizer.save_pretrained(str(tmp / "base"))
        named: tuple[str, str | None] | None = (str((target / "base").resolve()), None)
    else:
        named = _base_reference(recipe)
    if named is None:
        raise RuntimeError("adapter layers trained on a model whose base cannot be named")
    save_adapter_folder(model, tmp, *named)


def _base_reference(recipe: RecipeBase) -> tuple[str, str | None] | None:
    """(name, revision) of the base the recipe trained an adapter on, as peft should record it:
    a hub id with its revision; a local model folder's absolute path; or, when the recipe's
    model is itself an adapter folder, that adapter's own base."""
    ref = getattr(recipe, "model", None)
    if not isinstance(ref, ModelRef) or ref.path is None:
        return None
    local = recipe.resolve_path(ref.path)
    if not local.is_dir():
        return ref.path, ref.revision
    if (local / "base" / "config.json").exists():
        return str((local / "base").absolute()), None
    adapter = adapter_config(local) or adapter_config(local, ADAPTER_CONFIG)
    if adapter is None:
        return str(local.absolute()), None
    name = adapter.get("base_model_name_or_path")
    return (name, adapter.get("revision")) if name else None


def name_base(folder: Path, name: str, revision: str | None, file: str = "adapter_config.json") -> None:
    """Make the adapter config `file` in `folder` name `name` (at `revision`) as its base."""
    config_path = folder / file
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = name
    config["revision"] = revision
    atomic_write_json(config_path, config)


def adapter_config(folder: Path, file: str = "adapter_config.json") -> dict[str, Any] | None:
    """The adapter config `file` in `folder`, or None when it has none."""
    path = folder / file
    return json.loads(path.read_text()) if path.exists() else None


def _write_folder(target: Path, write: Callable[[Path], None]) -> Path:
    """Run `write` on a new folder beside `target`, then put it in target's place
    (llmtune.outputs.replace_folder: the old folder goes only once the new one is in)."""
    replace_folder(target, write)
    return target
