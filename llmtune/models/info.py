"""What a model reference is — where its files are, its head, a trained head's label names — read
from its files without loading weights, so that a job refuses a wrong model (exit 2, naming the
file and what is wrong) before it writes anything, instead of crashing or answering wrongly.

The one rule for "is this a classifier" (`head_of`), for "is this head a regression" (`is_regression`,
with its `label_range` scaling) and for generic `LABEL_n` names (`named_labels`, `head_columns`)
lives here too; `loading.load_model` runs the same checks.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmtune.errors import BadInput
from llmtune.models.regression_head import is_regression, label_range_of
from llmtune.recipes.common import ModelRef, RecipeBase

Head = Literal["causal_lm", "classification"]
WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# a tokenizer needs a vocabulary; without one transformers quietly builds a few-token tokenizer
VOCABULARIES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
)
NO_VOCABULARY_NEEDED = ("ByT5Tokenizer", "CanineTokenizer")  # byte / character level
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
REMOTE_CODE_HINT = "set model.trust_remote_code: true only if you trust the code in that folder or repo"


@dataclass
class ModelInfo:
    """A model reference as its files describe it."""

    head: Head | None  # None: neither a causal LM nor a classifier (e.g. a bare BertModel)
    head_labels: list[str] | None  # a trained head's label names in output order; None if unnamed
    architectures: list[str]
    path: Path | None = None  # the base model's folder (None: a scratch model)
    adapter: Path | None = None
    regression: bool = False  # a head with one output that predicts a number (task: regression)
    label_range: tuple[float, float] | None = None  # regression: the head predicts 0..1 of this

    @property
    def tokenizer_dir(self) -> Path | None:
        """Where the tokenizer is: the adapter folder when it carries one, else the base."""
        if self.adapter is not None and has_tokenizer(self.adapter):
            return self.adapter
        return self.path


def inspect_model(ref: ModelRef, recipe: RecipeBase, key: str, *, deep: bool = True) -> ModelInfo:
    """Find `ref`'s folders and check its files: config, weights, tokenizer, adapter, custom code.
    Raises BadInput naming the file and what is wrong. `deep=False` leaves out the checks that
    need transformers (and so torch): custom code, tokenizer classes (for a job that will load
    nothing, e.g. a rerun with no new rows)."""
    if ref.scratch is not None:
        head: Head = "classification" if ref.scratch.architecture == "bert" else "causal_lm"
        return ModelInfo(head, None, [])
    path = Path(resolve_model_path(ref, recipe, key))
    adapter = recipe.resolve_path(ref.adapter) if ref.adapter else None
    if adapter is None and (path / "adapter_config.json").exists():
        adapter, path = path, Path(adapter_base(path, recipe, key))
    adapter_config: dict[str, Any] = {}
    if adapter is not None:
        if not adapter.is_dir() or not (adapter / "adapter_config.json").exists():
            raise BadInput(
                f"no PEFT adapter in {adapter} (adapter_config.json missing)", key=f"{key}.adapter"
            )
        adapter_config = check_adapter(adapter) if deep else read_config(adapter / "adapter_config.json")
    config = check_model_folder(path, ref) if deep else read_config(path / "config.json")
    config_file = path / "config.json"
    if adapter is not None and (adapter / "config.json").exists():
        config_file = adapter / "config.json"  # a trained head's labels are saved beside the adapter
        config = read_config(config_file)
    tokenizer_dir = adapter if adapter is not None and has_tokenizer(adapter) else path
    if deep:
        check_tokenizer(tokenizer_dir, ref)
    return info_of_config(config, config_file, path, adapter, adapter_config.get("task_type"))


def info_of_config(
    config: dict[str, Any],
    config_file: Path,
    path: Path,
    adapter: Path | None = None,
    task_type: str | None = None,
) -> ModelInfo:
    """What a model's config.json (read from `config_file`) says: the head (from its
    architectures, or an adapter's `task_type`), the label names, and whether the head is a
    regression and in what label range. `path`/`adapter`: the folders the info names."""
    architectures = list(config.get("architectures") or [])
    head = head_of(architectures, task_type)
    return ModelInfo(
        head,
        named_labels(config.get("id2label"), config_file),
        architectures,
        path,
        adapter,
        regression=head == "classification" and is_regression(config),
        label_range=label_range_of(config, config_file),
    )


def resolve_model_path(ref: ModelRef, recipe: RecipeBase, key: str) -> str:
    """A local folder (relative to the recipe) or a hub id found in the local HF cache.

    Raises BadInput saying where it looked when neither has the model.
    """
    assert ref.path is not None
    local = recipe.resolve_path(ref.path)
    if local.is_dir():
        return str(local)
    if local.exists():
        raise BadInput(f"{local} is a file; expected a model folder or a hub id", key=f"{key}.path")
    import huggingface_hub.constants as hub
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    from llmtune.models.hub import offline_when_unreachable, why_offline

    looked = f"looked in {local} and in the Hugging Face cache {HF_HUB_CACHE}"
    if ref.path.count("/") > 1 or ref.path.startswith((".", "/", "~")):
        raise BadInput(f"model folder not found: {local} ({looked})", key=f"{key}.path")
    try:
        cached = snapshot_download(ref.path, revision=ref.revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: fall through to the hub or refuse
        cached = None
    offline_when_unreachable()  # before anything loads it by its hub id (transformers would retry)
    if cached is not None:
        return cached
    if hub.HF_HUB_OFFLINE:
        raise BadInput(f"model {ref.path!r} not found: {looked}; {why_offline()}", key=f"{key}.path")
    try:
        return snapshot_download(ref.path, revision=ref.revision)
    except Exception as exc:  # noqa: BLE001 - any hub failure means we cannot get the model
        raise BadInput(
            f"model {ref.path!r} not found: {looked}, and the hub answered: {type(exc).__name__}",
            key=f"{key}.path",
        ) from None


def adapter_base(adapter: Path, recipe: RecipeBase, key: str) -> str:
    """The base model an adapter folder was trained on (a `base/` folder beside it wins)."""
    if (adapter / "base" / "config.json").exists():
        return str(adapter / "base")
    config_file = adapter / "adapter_config.json"
    base = read_config(config_file).get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise BadInput("names no base model (base_model_name_or_path)", file=str(config_file))
    try:
        return resolve_model_path(ModelRef(path=base), recipe, key)
    except BadInput as exc:
        raise BadInput(
            f"the adapter's base model {base!r} cannot be found: {exc}", file=str(config_file)
        ) from None


def read_config(path: Path) -> dict[str, Any]:
    """A JSON object file that must be there; BadInput naming it when missing or not JSON."""
    if not path.is_file():
        raise BadInput(f"{path.name} missing: not a Hugging Face model folder", file=str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BadInput("not UTF-8 text", file=str(path)) from None
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"invalid JSON: {exc.msg} at column {exc.colno}", file=str(path), line=exc.lineno
        ) from None
    if not isinstance(data, dict):
        raise BadInput(f"expected a JSON object, got {type(data).__name__}", file=str(path))
    return data


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object, or {} when it is missing or unreadable (optional files)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_model_folder(path: Path, ref: ModelRef) -> dict[str, Any]:
    """config.json (JSON, known model type or trusted custom code, integer id2label keys) and the
    weights files; returns the config."""
    config_file = path / "config.json"
    config = read_config(config_file)
    check_remote_code(config, config_file, ref, "model_type")
    named_labels(config.get("id2label"), config_file)
    if (path / "generation_config.json").exists():  # transformers would drop a broken one silently
        read_config(path / "generation_config.json")
    check_weights(path, WEIGHTS)
    return config


def check_remote_code(config: dict[str, Any], file: Path, ref: ModelRef, type_key: str) -> None:
    """Refuse a model or tokenizer that only custom code (config `auto_map`) can load, unless
    the recipe trusts it. A type transformers knows loads with its own code, as transformers does."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    name = config.get(type_key)
    if not name or ref.trust_remote_code:
        return
    known = name in CONFIG_MAPPING_NAMES if type_key == "model_type" else tokenizer_class_from_name(name)
    if known:
        return
    if config.get("auto_map"):
        raise BadInput(
            f"{type_key} {name!r} needs custom code shipped with the model (auto_map); {REMOTE_CODE_HINT}",
            file=str(file),
        )
    if type_key == "model_type":
        import transformers

        raise BadInput(
            f"model_type {name!r} is not known to transformers {transformers.__version__}", file=str(file)
        )


def check_weights(folder: Path, names: tuple[str, ...]) -> None:
    """The first weights file of `names` in `folder` exists and is whole (shards too)."""
    found = next((folder / n for n in names if (folder / n).is_file()), None)
    if found is None:
        raise BadInput(f"no weights file here (expected {' or '.join(names)})", file=str(folder))
    files = [found]
    if found.name.endswith(".index.json"):
        weight_map = read_config(found).get("weight_map")
        if not isinstance(weight_map, dict):
            raise BadInput("has no weight_map", file=str(found))
        files = [folder / shard for shard in sorted(set(map(str, weight_map.values())))]
    for file in files:
        if not file.is_file():
            raise BadInput(f"weights file missing: {file.name} (listed in {found.name})", file=str(file))
        if file.suffix == ".safetensors":
            _check_safetensors(file)
        else:
            _check_torch_archive(file)


def _check_safetensors(file: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:  # reads the header and checks that the file covers every tensor; loads nothing
        with safe_open(str(file), framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise BadInput(
            f"truncated or corrupt weights file: {str(exc).splitlines()[0]}", file=str(file)
        ) from None


def _check_torch_archive(file: Path) -> None:
    with file.open("rb") as f:
        zipped = f.read(2) == b"PK"  # torch.save's format; older pickles are not checked
    if zipped and not zipfile.is_zipfile(file):  # reads only the directory at the end
        raise BadInput("truncated or corrupt weights file (an incomplete zip archive)", file=str(file))


def check_adapter(adapter: Path) -> dict[str, Any]:
    """adapter_config.json is a peft config of a known type, and the adapter weights are whole."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config_file = adapter / "adapter_config.json"
    config = read_config(config_file)
    peft_type = config.get("peft_type")
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        known = ", ".join(sorted(str(getattr(t, "value", t)) for t in PEFT_TYPE_TO_CONFIG_MAPPING))
        raise BadInput(f"peft_type {peft_type!r} is not a peft adapter type ({known})", file=str(config_file))
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    wrong = _wrongly_typed(config_class, config)
    if wrong:
        raise BadInput(wrong, file=str(config_file))
    try:
        config_class.from_pretrained(str(adapter))
    except (TypeError, ValueError, KeyError) as exc:
        raise BadInput(f"not a valid {peft_type} config: {exc}", file=str(config_file)) from None
    check_weights(adapter, ADAPTER_WEIGHTS)
    return config


def _wrongly_typed(config_class: Any, values: dict[str, Any]) -> str | None:
    """The first plain int / float / bool / str setting whose value has another type (peft does
    not check, and fails deep inside model code instead)."""
    import typing

    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check against
        return None
    for name, value in values.items():
        expected = hints.get(name)
        if expected not in (int, float, bool, str) or value is None:
            continue
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            return f"{name} must be {expected.__name__}, got {value!r}"
    return None


def has_tokenizer(folder: Path) -> bool:
    """Whether `folder` holds a tokenizer (a vocabulary, or a config of one that needs none)."""
    if any((folder / name).is_file() for name in VOCABULARIES) or any(folder.glob("*.tiktoken")):
        return True
    return read_json(folder / "tokenizer_config.json").get("tokenizer_class") in NO_VOCABULARY_NEEDED


def check_tokenizer(folder: Path, ref: ModelRef) -> None:
    """Refuse a folder without a tokenizer: transformers would build a few-token stand-in."""
    if not has_tokenizer(folder):
        raise BadInput(
            "no tokenizer here: expected tokenizer.json or a vocabulary "
            f"({', '.join(VOCABULARIES[1:])}); save it beside the model with tokenizer.save_pretrained",
            file=str(folder),
        )
    if (folder / "special_tokens_map.json").exists():
        read_config(folder / "special_tokens_map.json")
    if (folder / "tokenizer_config.json").exists():
        tokenizer_config = read_config(folder / "tokenizer_config.json")
        check_remote_code(tokenizer_config, folder / "tokenizer_config.json", ref, "tokenizer_class")


def head_of(architectures: list[str], task_type: str | None = None) -> Head | None:
    """The one rule for a model's head, from config `architectures` (or a model class name) and
    an adapter's `task_type`: classification, causal_lm, or None for neither."""
    if task_type == "SEQ_CLS" or any(a.endswith("ForSequenceClassification") for a in architectures):
        return "classification"
    if task_type == "CAUSAL_LM" or any(a.endswith(CAUSAL_LM_SUFFIXES) for a in architectures):
        return "causal_lm"
    return None


def model_head(model: Any) -> Head | None:
    """`head_of` for a loaded model (PEFT wrappers looked through)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return head_of([type(base).__name__])


def named_labels(id2label: Any, file: Path | None = None) -> list[str] | None:
    """A head's label names in output order, or None when they are transformers' generic
    LABEL_0..LABEL_n-1 (or absent). Keys must be the integers 0..n-1 (BadInput naming `file`)."""
    if not id2label:
        return None
    where = str(file) if file else None
    try:
        by_index = {int(k): str(v) for k, v in dict(id2label).items()}
    except (TypeError, ValueError):
        keys = list(dict(id2label)) if isinstance(id2label, dict) else id2label
        raise BadInput(f"id2label keys must be the integers 0..n-1, got {keys}", file=where) from None
    if sorted(by_index) != list(range(len(by_index))):
        raise BadInput(f"id2label keys must be the integers 0..n-1, got {sorted(by_index)}", file=where)
    names = [by_index[i] for i in range(len(by_index))]
    return None if names == generic_labels(len(names)) else names


def generic_labels(n: int) -> list[str]:
    """transformers' names for an unnamed head of `n` outputs."""
    return [f"LABEL_{i}" for i in range(n)]


def head_columns(head_names: list[str], labels: list[str]) -> list[int] | None:
    """Which head output each of `labels` is: by name, or by position when the head's names are
    generic and there are as many; None when the labels do not fit the head."""
    if set(labels) <= set(head_names):
        return [head_names.index(label) for label in labels]
    if head_names == generic_labels(len(labels)):
        return list(range(len(labels)))
    return None
