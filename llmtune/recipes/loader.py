"""Read a recipe file into plain data, remembering where every key came from.

Handles safe YAML loading, `extends` chains (deep merge, lists replaced, cycles refused),
`--set KEY=VALUE` overrides and `${ENV}` / `${ENV:-default}` interpolation. Validation against
the pydantic models happens in `llmtune.recipes.validate`; this module only assembles the data
and a map from dotted key to (file, line) so that every error can point at its source.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmtune.errors import BadInput

Key = tuple[str, ...]
Position = tuple[str, int | None]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class RawRecipe:
    """Recipe data before validation, with where each key was written."""

    data: dict[str, Any]
    path: Path
    positions: dict[Key, Position] = field(default_factory=dict)

    def where(self, key: Key) -> Position:
        """The file and line of `key`, or of its closest written ancestor."""
        for n in range(len(key), 0, -1):
            if key[:n] in self.positions:
                return self.positions[key[:n]]
        return (str(self.path), None)


def read_recipe(path: str | Path, overrides: list[str] | None = None) -> RawRecipe:
    """Load `path`, apply its `extends` chain, then `--set` overrides and env interpolation."""
    path = Path(path)
    raw = _read_with_extends(path, chain=())
    for override in overrides or []:
        _apply_override(raw, override)
    raw.data = _interpolate(raw.data, (), raw)
    return raw


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[Key, Position]]:
    if not path.is_file():
        raise BadInput("recipe file not found", file=str(path))
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInput(f"invalid YAML: {problem}", file=str(path), line=line) from None
    if data is None:
        raise BadInput("the recipe is empty", file=str(path))
    if not isinstance(data, dict):
        raise BadInput("a recipe must be a YAML mapping of keys to values", file=str(path), line=1)
    positions: dict[Key, Position] = {}
    _record_positions(node, (), str(path), positions)
    return data, positions


def _record_positions(node: yaml.Node, prefix: Key, file: str, out: dict[Key, Position]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (str(key_node.value),)
            out[key] = (file, key_node.start_mark.line + 1)
            _record_positions(value_node, key, file, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = prefix + (str(i),)
            out[key] = (file, item.start_mark.line + 1)
            _record_positions(item, key, file, out)


def _read_with_extends(path: Path, chain: tuple[Path, ...]) -> RawRecipe:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise BadInput(f"extends cycle: {cycle}", file=str(path), key="extends")
    data, positions = _read_yaml(path)
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return RawRecipe(data, path, positions)
    if not isinstance(parent_ref, str):
        line = positions.get(("extends",), (str(path), None))[1]
        raise BadInput("expected a path to another recipe", file=str(path), line=line, key="extends")
    parent_path = path.parent / parent_ref
    if not parent_path.is_file():
        line = positions.get(("extends",), (str(path), None))[1]
        raise BadInput(f"extended recipe not found: {parent_path}", file=str(path), line=line, key="extends")
    parent = _read_with_extends(parent_path, (*chain, resolved))
    merged_positions = {k: v for k, v in parent.positions.items()}
    for key in positions:  # a list in the child replaces the parent's list, positions included
        if isinstance(_get(data, key), list):
            merged_positions = {k: v for k, v in merged_positions.items() if k[: len(key)] != key}
    merged_positions.update(positions)
    return RawRecipe(_deep_merge(parent.data, data), path, merged_positions)


def _get(data: Any, key: Key) -> Any:
    for part in key:
        if isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_override(raw: RawRecipe, override: str) -> None:
    if "=" not in override:
        raise BadInput(f"--set expects KEY=VALUE, got {override!r}", file="--set")
    dotted, text = override.split("=", 1)
    key = tuple(part for part in dotted.strip().split("."))
    if not all(key):
        raise BadInput(f"--set has an empty key part in {dotted!r}", file="--set")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    target = raw.data
    for part in key[:-1]:
        child = target.get(part)
        if child is None:
            child = target[part] = {}
        elif not isinstance(child, dict):
            raise BadInput(f"cannot set {dotted}: {part} is not a mapping", file="--set", key=dotted)
        target = child
    target[key[-1]] = value
    raw.positions[key] = (f"--set {dotted}", None)


def _interpolate(value: Any, key: Key, raw: RawRecipe) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, key + (str(k),), raw) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, key + (str(i),), raw) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        file, line = raw.where(key)
        raise BadInput(
            f"environment variable {name} is not set (write ${{{name}:-default}} for a fallback)",
            file=file,
            line=line,
            key=".".join(key),
        )

    return _ENV.sub(replace, value)
