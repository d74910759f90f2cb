"""Saving trained models so that plain transformers + peft can load them, and `llmtune export`."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput
from llmtune.models.loading import LoadedModel
from llmtune.recipes.common import RecipeBase


def snapshot_base(model: Any, recipe: RecipeBase) -> Any | None:
    """A copy of a scratch model before the method wraps it: its random weights exist nowhere else.

    Hub and local bases are not copied; the adapter names them instead.
    """
    ref = getattr(recipe, "model", None)
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

    An adapter trained on a scratch base gets that base (`base`, the model before the method
    wrapped it) saved beside it in model/base; the adapter config points there.
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
        inner = model.get_base_model()
        inner.config.architectures = [type(inner).__name__]  # scratch configs have none
        inner.config.save_pretrained(str(tmp))  # id2label/num_labels for anyone loading the adapter
        if base is not None:
            base.save_pretrained(str(tmp / "base"))
            loaded.tokenizer.save_pretrained(str(tmp / "base"))
            _point_adapter_at(tmp, (target / "base").resolve())
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def _point_adapter_at(folder: Path, base: Path) -> None:
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base)
    config_path.write_text(json.dumps(config, indent=2))


def model_folder(run: Path) -> Path:
    """The model folder of a run directory, or `run` itself when it already is a model/adapter."""
    if (run / "model").is_dir():
        return run / "model"
    if (run / "adapter_config.json").exists() or (run / "config.json").exists():
        return run
    raise BadInput(f"{run} is neither a run directory (with model/) nor a model or adapter folder", key="RUN")


def load_for_export(folder: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a saved model or adapter, with the head its config names."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    config = AutoConfig.from_pretrained(str(folder))
    adapter_file = folder / "adapter_config.json"
    adapter = json.loads(adapter_file.read_text()) if adapter_file.exists() else {}
    architectures = config.architectures or []
    is_classifier = adapter.get("task_type") == "SEQ_CLS" or any(
        a.endswith("ForSequenceClassification") for a in architectures
    )
    cls = AutoModelForSequenceClassification if is_classifier else AutoModelForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not adapter:
        return cls.from_pretrained(str(folder)), tokenizer
    from peft import PeftModel

    base_path = (
        folder / "base" if (folder / "base" / "config.json").exists() else adapter["base_model_name_or_path"]
    )
    head: dict[str, Any] = {}
    if is_classifier:  # the base may be a plain encoder: give it the trained head's labels
        head = {"num_labels": config.num_labels, "id2label": config.id2label, "label2id": config.label2id}
    base = cls.from_pretrained(str(base_path), **head)
    return PeftModel.from_pretrained(base, str(folder)), tokenizer


def export_model(run: Path, output: Path, merge: bool = False) -> Path:
    """`llmtune export`: copy a run's model into a standalone folder, merging a LoRA/IA3 adapter
    into the base weights when `merge` (the result loads without peft)."""
    folder = model_folder(run)
    if output.exists() and any(output.iterdir()):
        raise BadInput(f"{output} exists and is not empty; choose another --output", key="--output")
    is_adapter = (folder / "adapter_config.json").exists()
    if merge and not is_adapter:
        raise BadInput(
            f"{folder} holds a full model, not an adapter: there is nothing to merge", key="--merge"
        )
    if merge:
        adapter_type = json.loads((folder / "adapter_config.json").read_text()).get("peft_type", "")
        if adapter_type not in ("LORA", "IA3"):
            raise BadInput(
                f"a {adapter_type} adapter cannot be merged into the weights; export it without --merge",
                key="--merge",
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if merge:
        model, tokenizer = load_for_export(folder)
        model = model.merge_and_unload()
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    else:
        shutil.copytree(folder, tmp)
        if (tmp / "base" / "config.json").exists():
            _point_adapter_at(tmp, (output / "base").resolve())
    if output.exists():
        output.rmdir()
    tmp.rename(output)
    return output
