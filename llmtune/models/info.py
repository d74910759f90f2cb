"""What a model reference is — its head, a trained head's label names, where its files are — read
from its config files without loading weights, so a job can refuse a wrong model before it
writes anything."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput
from llmtune.models.loading import Head, adapter_base, resolve_model_path
from llmtune.recipes.common import ModelRef, RecipeBase


@dataclass
class ModelInfo:
    """A model reference as its files describe it."""

    head: Head | None  # None: neither a causal LM nor a classifier (e.g. a bare BertModel)
    head_labels: list[str] | None  # a trained head's label names in output order; None if unnamed
    architectures: list[str]
    path: Path | None = None  # the base model's folder (None: a scratch model)
    adapter: Path | None = None

    @property
    def tokenizer_dir(self) -> Path | None:
        """Where the tokenizer is: the adapter folder when it carries one, else the base."""
        if self.adapter is not None and (self.adapter / "tokenizer_config.json").exists():
            return self.adapter
        return self.path


def inspect_model(ref: ModelRef, recipe: RecipeBase, key: str) -> ModelInfo:
    """Read `ref`'s adapter and model configs. Raises BadInput when the model or adapter is missing."""
    if ref.scratch is not None:
        head: Head = "classification" if ref.scratch.architecture == "bert" else "causal_lm"
        return ModelInfo(head, None, [])
    path = Path(resolve_model_path(ref, recipe, key))
    adapter = recipe.resolve_path(ref.adapter) if ref.adapter else None
    if adapter is None and (path / "adapter_config.json").exists():
        adapter, path = path, Path(adapter_base(path, recipe, key))
    if adapter is not None and not (adapter / "adapter_config.json").exists():
        raise BadInput(f"no PEFT adapter in {adapter} (adapter_config.json missing)", key=f"{key}.adapter")
    config = (read_json(adapter / "config.json") if adapter else {}) or read_json(path / "config.json")
    architectures = list(config.get("architectures") or [])
    names = [str(v) for _, v in sorted((int(k), v) for k, v in (config.get("id2label") or {}).items())]
    unnamed = not names or all(n.startswith("LABEL_") for n in names)
    return ModelInfo(_head(adapter, architectures), None if unnamed else names, architectures, path, adapter)


def _head(adapter: Path | None, architectures: list[str]) -> Head | None:
    task = read_json(adapter / "adapter_config.json").get("task_type") if adapter else None
    if task == "SEQ_CLS" or any(a.endswith("ForSequenceClassification") for a in architectures):
        return "classification"
    if task == "CAUSAL_LM" or any(
        a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures
    ):
        return "causal_lm"
    return None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object, or {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
