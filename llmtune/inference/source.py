"""What MODEL names for `llmtune predict` and `llmtune chat`: a run directory (its model/ and
the way the run fed it: template, columns, max length, generation length, chat format), an
export, a local model folder, or a hub id. Only files are read here; nothing is loaded."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmtune.errors import BadInput
from llmtune.provenance import read_manifest
from llmtune.recipes.common import ModelRef, RecipeBase

EXPORT_FILES = ("export.json", ".llmtune-export.json")
ENGINE_FOR = {"onnx": "onnx", "gguf": "llamacpp"}


@dataclass
class Source:
    """A model to run and how its run fed it."""

    ref: ModelRef
    described: str
    run: Path | None = None
    template: str | None = None
    """The run's data.template (None: the model reads the text as it is)."""
    columns: dict[str, str] = field(default_factory=dict)
    """The run's data.columns: canonical field -> column, to read an --input file like the run's data."""
    max_length: int = 2048
    max_new_tokens: int = 64
    chat: bool | None = None
    """Apply the tokenizer's chat template: True for a run trained on messages, False for other
    runs, None (when it has one) for models from elsewhere."""
    seed: int = 42
    engine: str | None = None
    """The engine an export's format needs (onnx, llamacpp); None: any."""


class StubRecipe(RecipeBase):
    """The recipe fields model loading reads (seed; paths resolve against the working folder)."""

    kind: str = "predict"


def find_source(model: str) -> Source:
    """The Source `model` names; BadInput when it names nothing usable."""
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":  # llama.cpp's own file
        return Source(ModelRef(path=str(path.resolve())), described=str(path), engine="llamacpp")
    if path.is_file():
        raise BadInput(
            f"{model} is a file; expected a run directory, a model folder, a GGUF file or a hub id",
            key="MODEL",
        )
    if path.is_dir():
        manifest = read_manifest(path)
        if manifest is not None:
            return _from_run(path, manifest)
        fmt = export_format(path)
        if fmt in ENGINE_FOR:
            return Source(ModelRef(path=str(path.resolve())), described=str(path), engine=ENGINE_FOR[fmt])
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise BadInput(
                f"{model} is neither an llmtune run (no manifest.json) nor a model folder (no config.json)",
                key="MODEL",
            )
        return Source(ModelRef(path=str(path.resolve())), described=str(path))
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or not model.strip():
        raise BadInput(f"{model}: no such run directory or model folder", key="MODEL")
    return Source(ModelRef(path=model), described=model)


def _from_run(run: Path, manifest: dict[str, Any]) -> Source:
    folder = run / "model"
    if not (folder / "config.json").exists() and not (folder / "adapter_config.json").exists():
        status = manifest.get("status")
        raise BadInput(
            f"the run {run} has no model/ (its status: {status}); predict needs a run that saved its model",
            key="MODEL",
        )
    recipe = _stored_recipe(run)
    data = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
    evaluation = recipe.get("evaluation") if isinstance(recipe.get("evaluation"), dict) else {}
    summary = manifest.get("summary") if isinstance(manifest.get("summary"), dict) else {}
    template = data.get("template")
    columns = data.get("columns")
    return Source(
        ModelRef(path=str(folder.resolve())),
        described=str(run),
        run=run,
        template=template if isinstance(template, str) else None,
        columns=columns if isinstance(columns, dict) else {},
        max_length=int(data.get("max_length") or 2048),
        max_new_tokens=int(evaluation.get("max_new_tokens") or 64),
        chat=summary.get("data_format") == "messages",
        seed=int(recipe.get("seed") or 42),
    )


def _stored_recipe(run: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BadInput(f"cannot read the run's recipe: {exc}", file=str(run / "recipe.yaml")) from None
    return data if isinstance(data, dict) else {}


def export_format(folder: Path) -> str | None:
    """The format of an `llmtune export` folder (or of a folder holding an .onnx / .gguf file)."""
    for name in EXPORT_FILES:
        try:
            fmt = json.loads((folder / name).read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(fmt, str):
            return fmt
    if any(folder.glob("*.onnx")):
        return "onnx"
    if any(folder.glob("*.gguf")):
        return "gguf"
    return None


def open_engine(source: Source, engine: str = "hf", *, max_new_tokens: int | None = None) -> Any:
    """The model behind an engine from the registry, as bulk-infer serves it: the head its config
    names, an adapter merged where peft can merge it, the run's max length; an ONNX or GGUF
    export on its own runtime. BadInput for a model that is neither a causal LM nor a classifier,
    or that the engine cannot run."""
    import llmtune.inference.registry as registry
    from llmtune.inference.interface import EngineRequest
    from llmtune.models.loading import inspect_model
    from llmtune.recipes.engines import VllmSettings

    if engine == "hf" and source.engine is not None:
        engine = source.engine  # an ONNX or GGUF export runs on its own runtime
    if engine not in registry.ENGINES:
        hint = " (bulk-infer runs files on a Ray pool)" if engine == "ray" else ""
        raise BadInput(
            f"expected --engine {', '.join(registry.ENGINES)}, got {engine!r}{hint}", key="--engine"
        )
    if source.engine is not None and engine != source.engine:
        raise BadInput(f"{source.described} runs on --engine {source.engine}, not {engine}", key="--engine")
    stub = StubRecipe(seed=source.seed)
    registry.require(engine, "--engine")
    info = registry.inspect(engine, source.ref, stub, "MODEL") or inspect_model(source.ref, stub, "MODEL")
    if info.head is None:
        raise BadInput(
            f"{source.described} is neither a causal LM nor a classifier (architectures: "
            f"{info.architectures or 'unknown'}); fine-tune a head first (llmtune finetune) or use a causal LM",
            key="MODEL",
        )
    registry.check_head(engine, info.head, source.ref.path, key="--engine")
    request = EngineRequest(
        ref=source.ref,
        recipe=stub,
        head=info.head,
        labels=info.head_labels,
        max_length=source.max_length,
        max_new_tokens=max_new_tokens or source.max_new_tokens,
        label_range=info.label_range,
        key="MODEL",
        settings={"vllm": VllmSettings()},
        merge_adapters=True,  # folded into the weights, as bulk-infer runs it
    )
    return registry.open_engine(engine, request)
