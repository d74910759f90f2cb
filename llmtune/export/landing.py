"""Where an export may land, and how it lands there.

The rules (SPEC's run-directory rules, applied to exports): the target is never one of the run's
inputs, nor inside one, nor holds one (compared after resolving links, and by device and inode,
so a bind mount or a second path to the same folder is caught too); a folder already there must
be new, empty, or an earlier export; a re-export replaces only the files that export wrote (its
marker lists them) and keeps whatever the user added; the new export is written in a temp folder
beside the target and renamed into place, so nothing is ever written in place through a link or
a hard link. The model folder being exported is checked first: a dangling link, a truncated
safetensors file or an unreadable JSON file is exit 2 naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput
from llmtune.folders import replace_folder

EXPORT_MARKER = ".llmtune-export.json"
"""Marks a folder `llmtune export` wrote, and lists the files it wrote there."""

# what exports wrote before their marker listed the files (so README.md, which they never wrote,
# is the user's)
EARLIER_EXPORT_CONTENTS = (
    *"config.json generation_config.json *.safetensors *.bin tokenizer* special_tokens_map.json".split(),
    *"vocab.* merges.txt added_tokens.json chat_template.* adapter_config.json adapter_model.*".split(),
    *"adapters.json adapter_layers.* base/ export.json model.onnx* *.gguf".split(),
    EXPORT_MARKER,
)


def run_inputs(folder: Path) -> list[tuple[Path, str]]:
    """Every path the run behind model folder `folder` read or is made of, with what it is: the
    folder, its base (model/base, or the local base folder its adapter config names), and, from
    the run's manifest and recipe, the recipe file, the data files, the recipe's local model and
    adapter."""
    inputs = [(folder, "the model being exported"), (folder / "base", "its base model")]
    for name in ("adapter_config.json", "adapters.json"):
        config = _json_or_none(folder / name)
        base = (config or {}).get("base_model_name_or_path")
        if isinstance(base, str) and Path(base).is_absolute():
            inputs.append((Path(base), "the base model its adapter was trained on"))
    run = folder.parent
    manifest = _json_or_none(run / "manifest.json") if folder.name == "model" else None
    if manifest:
        recipe_file = manifest.get("recipe_file")
        here = Path(recipe_file).parent if isinstance(recipe_file, str) else run
        # data files are recorded as the recipe named them: relative ones are relative to its folder
        inputs += [(here / p, "a data file of the run") for p in manifest.get("data_files") or {}]
        if isinstance(recipe_file, str):
            inputs.append((Path(recipe_file), "the run's recipe"))
            found = _recipe_models(run / "recipe.yaml", Path(recipe_file).parent)
            inputs += [(p, "the model (or adapter) the run was trained on") for p in found]
    return [(p, what) for p, what in inputs if os.path.lexists(p)]


def _recipe_models(recipe_yaml: Path, base_dir: Path) -> list[Path]:
    import yaml

    try:
        recipe = yaml.safe_load(recipe_yaml.read_text())
    except (OSError, yaml.YAMLError):
        return []
    model = (recipe or {}).get("model") or {}
    found = []
    for key in ("path", "adapter"):
        value = model.get(key) if isinstance(model, dict) else None
        if isinstance(value, str) and (base_dir / value).exists():
            found.append(base_dir / value)
    return found


def check_target(folder: Path, output: Path) -> Path:
    """The real folder to export `folder` into, once it is sure that nothing of the user's is
    replaced: exit 2 when it is, holds, or is inside an input of the run, is a file, or is a
    non-empty folder that is not an earlier export."""
    target = output.resolve()
    for path, what in run_inputs(folder):
        if _overlaps(target, path):
            raise BadInput(
                f"{output} is, holds or is inside {path}, {what}; "
                "llmtune never writes over a run's model, base, data or recipe: choose another --output",
                key="--output",
            )
    if target.exists() and not target.is_dir():
        raise BadInput(
            f"{output} is a file; --output must be a new or empty folder, or an earlier llmtune export",
            key="--output",
        )
    if target.is_dir() and any(target.iterdir()) and not (target / EXPORT_MARKER).is_file():
        raise BadInput(
            f"{output} exists and is not an llmtune export (it holds no {EXPORT_MARKER}); llmtune never "
            "replaces other folders: choose a new or empty folder for --output",
            key="--output",
        )
    return target


def _overlaps(target: Path, path: Path) -> bool:
    real = path.resolve()
    if target == real or target.is_relative_to(real) or real.is_relative_to(target):
        return True
    ids = {_inode(p) for p in [target, *target.parents]} - {None}
    if _inode(real) in ids:  # the target is the input, or inside it, by another path
        return True
    target_id = _inode(target)
    return target_id is not None and any(_inode(p) == target_id for p in real.parents)


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_model_files(folder: Path) -> None:
    """Exit 2 naming the first broken file of the model folder: a dangling link, a truncated or
    corrupt safetensors file, a JSON file that does not parse."""
    from safetensors import safe_open

    for path in sorted(_walk(folder)):
        if path.is_symlink() and not path.exists():
            raise BadInput("a dangling symbolic link in the model folder", file=str(path))
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt") as handle:
                    list(handle.keys())
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
        except Exception as exc:  # safetensors raises its own error type, json a ValueError
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInput(
                f"cannot read it ({reason}): the model folder is damaged", file=str(path)
            ) from None


def _walk(folder: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(folder):
        yield from (Path(root) / name for name in files)
        yield from (Path(root) / d for d in dirs if (Path(root) / d).is_symlink())


def written_by_export(target: Path) -> list[str]:
    """Names in an earlier export at `target` that export wrote (its marker's list, or, for an
    export from before the list, the names exports write)."""
    marker = _json_or_none(target / EXPORT_MARKER) or {}
    listed = marker.get("files")
    names = [
        child.name + ("/" if child.is_dir() and not child.is_symlink() else "") for child in target.iterdir()
    ]
    if isinstance(listed, list):
        return [n for n in names if n.rstrip("/") in listed or n == EXPORT_MARKER]
    return [n for n in names if any(fnmatch(n, pattern) for pattern in EARLIER_EXPORT_CONTENTS)]


def land(target: Path, write: Callable[[Path], Any], output: Path) -> Any:
    """Run `write` on a new temp folder beside `target`, record what it wrote in the marker, and
    rename it into place (llmtune.outputs.replace_folder). Over an earlier export, the files the
    user added there are moved into the new folder first (a name both would hold is exit 2,
    nothing changed); the earlier export's own files are deleted only once the new one is in. On
    failure only the temp folder goes, and the earlier export is put back as it was."""

    def write_and_record(tmp: Path) -> Any:
        result = write(tmp)
        _record_files(tmp, sorted(p.name for p in tmp.iterdir()))
        return result

    def users_files(earlier: Path, new: Path) -> list[str]:
        previous = {n.rstrip("/") for n in written_by_export(earlier)}
        users = sorted(p.name for p in earlier.iterdir() if p.name not in previous)
        ours = {p.name for p in new.iterdir()}
        if clash := [name for name in users if name in ours]:
            raise BadInput(
                f"{output / clash[0]} was added by you to the earlier export, and the new export writes "
                "a file of that name; llmtune never deletes what it did not write: move it away first",
                key="--output",
            )
        return users

    return replace_folder(target, write_and_record, carry=users_files)


def _record_files(folder: Path, names: list[str]) -> None:
    marker_path = folder / EXPORT_MARKER
    marker = _json_or_none(marker_path) or {}
    marker["files"] = sorted(set(names) | {EXPORT_MARKER})
    marker_path.write_text(json.dumps(marker, indent=2) + "\n")


def _json_or_none(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
