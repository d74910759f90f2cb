"""`llmtune export --format hf`: a run's model written as plain transformers + peft folders.

The export lands by `llmtune.export.landing`'s rules: a new folder beside the target under a
unique temp name, renamed into place, into a new or empty folder or over an earlier export of its
own (it holds EXPORT_MARKER), never over anything else. Saving a model at the end of training is
`llmtune.models.export`'s part.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmtune import __version__
from llmtune.console import say
from llmtune.errors import BadInput
from llmtune.export.landing import EXPORT_MARKER
from llmtune.models.adapters import ADAPTER_CONFIG, is_adapter_folder
from llmtune.models.export import adapter_config, name_base
from llmtune.models.info import head_of
from llmtune.outputs import atomic_write_json


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
    is_classifier = head_of(architectures, adapter.get("task_type")) == "classification"
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
    if adapter.get("revision") and not Path(base_path).is_dir():
        head["revision"] = adapter["revision"]
    try:
        base = cls.from_pretrained(str(base_path), **head)
    except (OSError, ValueError) as exc:  # not local, not cached, hub unreachable
        raise BadInput(
            f"cannot load the base model {base_path} that {adapter_file} names, to merge the adapter "
            f"into ({type(exc).__name__}); make it available, or export the adapter as it is with --no-merge",
            key="RUN",
        ) from None
    return PeftModel.from_pretrained(base, str(folder)), tokenizer


def export_model(
    run: Path,
    output: Path,
    merge: bool | None = None,
    finish: Callable[[Path, bool, bool], Any] | None = None,
) -> Any:
    """`llmtune export --format hf`: write a run's model (or a model/adapter folder) to `output`
    as a standalone Hugging Face model; returns what `finish` returns.

    An adapter that peft can merge (LoRA, DoRA, IA3, ...) is merged into its base by default, so
    the result loads with transformers alone; `merge=False` copies the adapter as is; an adapter
    that cannot be merged (prefix, prompt tuning) is copied, and the message says how to load it.
    `output` follows llmtune.export.landing's rules. `finish(folder, merged, standalone)` runs on
    the written temp folder before it lands (the model card, export.json, the parity gate).
    """
    from llmtune.export.landing import check_model_files, check_target, land

    folder = model_folder(run)
    check_model_files(folder)
    target = check_target(folder, output)
    if is_adapter_folder(folder):
        return _export_adapter_layers(folder, target, output, merge, finish)
    adapter = adapter_config(folder)
    kind = str(adapter.get("peft_type", "unknown")) if adapter else None
    if merge and adapter is None:
        raise BadInput(
            f"{folder} holds a full model, not an adapter: there is nothing to merge", key="--merge"
        )
    if merge and not can_merge(kind):
        raise BadInput(
            f"a {kind} adapter cannot be merged into the weights; export it without --merge "
            "(the output is then the adapter, loaded with peft on top of its base)",
            key="--merge",
        )
    merging = adapter is not None and (can_merge(kind) if merge is None else merge)

    def write(tmp: Path) -> Any:
        if merging:
            model, tokenizer = load_for_export(folder)
            model.merge_and_unload().save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        else:
            # copyfile, not copy2: the files get the user's umask, not the source's modes
            ignore = shutil.ignore_patterns(EXPORT_MARKER, "README.md")
            shutil.copytree(folder, tmp, dirs_exist_ok=True, copy_function=shutil.copyfile, ignore=ignore)
            if (tmp / "base" / "config.json").exists():
                name_base(tmp, str(target / "base"), None)
        result = finish(tmp, merging, adapter is None or merging) if finish else None
        marker = {"format": "hf", "merged": merging, "llmtune": __version__}
        atomic_write_json(tmp / EXPORT_MARKER, marker)
        return result

    if target.is_dir() and any(target.iterdir()):
        say(f"replacing the earlier export in {output}")
    result = land(target, write, output)
    say(_how_to_load(output, adapter, kind, merging, merge))
    return result


def _export_adapter_layers(
    folder: Path,
    target: Path,
    output: Path,
    merge: bool | None,
    finish: Callable[[Path, bool, bool], Any] | None,
) -> Any:
    """Adapter layers cannot be merged (they are non-linear): --merge is refused, and otherwise the
    folder is copied as it is, with the message saying how to load it."""
    from llmtune.export.landing import land

    how = (
        "use the folder as model.path in an llmtune recipe (finetune, bulk-infer, prompt-eval), or in "
        "Python: from llmtune.models.adapters import load_adapter_folder; "
        f"model, tokenizer = load_adapter_folder({str(output)!r})"
    )
    if merge:
        raise BadInput(
            f"{folder} holds adapter layers, which cannot be merged into the base weights: they are small "
            "non-linear networks (down-projection, activation, up-projection) added to each block, not a "
            "change of the base's weights, and transformers cannot load them without custom code. Export "
            f"without --merge to copy them; then {how}",
            key="--merge",
        )

    def write(tmp: Path) -> Any:
        ignore = shutil.ignore_patterns(EXPORT_MARKER, "README.md")
        shutil.copytree(folder, tmp, dirs_exist_ok=True, copy_function=shutil.copyfile, ignore=ignore)
        if (tmp / "base" / "config.json").exists():
            name_base(tmp, str(target / "base"), None, ADAPTER_CONFIG)
        result = finish(tmp, False, False) if finish else None
        marker = {"format": "hf", "merged": False, "llmtune": __version__}
        atomic_write_json(tmp / EXPORT_MARKER, marker)
        return result

    if target.is_dir() and any(target.iterdir()):
        say(f"replacing the earlier export in {output}")
    result = land(target, write, output)
    say(
        f"{output} holds adapter layers, not a standalone model: they are non-linear and cannot be merged "
        f"into the weights (transformers alone cannot load them); {how}"
    )
    return result


def can_merge(kind: str | None) -> bool:
    """Whether peft can fold this kind of adapter into the base weights (prompt learning cannot)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(kind or "")
    return tuner is not None and hasattr(tuner, "merge_and_unload")


# peft's adapter types as people write them
KIND_NAMES = {"LORA": "LoRA", "PREFIX_TUNING": "prefix-tuning", "PROMPT_TUNING": "prompt-tuning"}


def _how_to_load(
    output: Path, adapter: dict[str, Any] | None, kind: str | None, merged: bool, merge: bool | None
) -> str:
    kind = KIND_NAMES.get(kind or "", kind)
    config = json.loads((output / "config.json").read_text()) if (output / "config.json").exists() else {}
    classifier = (
        head_of(config.get("architectures") or [], (adapter or {}).get("task_type")) == "classification"
    )
    auto = "AutoModelForSequenceClassification" if classifier else "AutoModelForCausalLM"
    if adapter is None or merged:
        what = f"merged the {kind} adapter into its base: " if merged else ""
        return (
            f"{what}{output} is a standalone model: load it with transformers alone ({auto}.from_pretrained)"
        )
    why = "not merged: --merge merges it" if merge is False else f"peft cannot merge {kind} adapters"
    base = output / "base" if (output / "base").is_dir() else adapter.get("base_model_name_or_path")
    return (
        f"{output} is a {kind} adapter, not a standalone model ({why}): load it with peft on top of its "
        f"base, PeftModel.from_pretrained({auto}.from_pretrained({str(base)!r}), {str(output)!r})"
    )
