"""Read a recipe file into plain data, remembering where every key came from.

Handles safe YAML loading, `extends` chains (deep merge, lists replaced, cycles refused),
`--set KEY=VALUE` overrides and `${ENV}` / `${ENV:-default}` interpolation. Validation against
the pydantic models happens in `llmtune.recipes.load_recipe` (its errors located by
`llmtune.recipes.problems`); this module only assembles the data and a map from dotted key to
(file, line) so that every error can point at its source.

A recipe is user input, so reading one must end in data or in `BadInput` naming the file and
line, whatever the bytes are: not UTF-8, not a mapping, duplicate keys, nesting too deep for the
code that walks it, or aliases that expand to a huge tree ("billion laughs").
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
_SET = "--set"  # the "file" of a value given on the command line

# Limits far above any real recipe, low enough that reading one stays instant and small.
MAX_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 64  # nesting levels; deeper input would exhaust the stack of whatever walks it
MAX_ALIAS_NODES = 100_000  # nodes that aliases may add when expanded
MAX_EXTENDS = 32  # files in one extends chain
_MERGE_TAG = "tag:yaml.org,2002:merge"


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

    def declared_in(self, key: Key) -> Path | None:
        """The recipe file that wrote exactly `key`; None for defaults and --set values."""
        position = self.positions.get(key)
        if position is None or position[0].startswith(_SET):
            return None
        return Path(position[0])


def read_recipe(path: str | Path, overrides: list[str] | None = None) -> RawRecipe:
    """Load `path`, apply its `extends` chain, then `--set` overrides and env interpolation."""
    path = Path(path)
    raw = _read_with_extends(path, chain=())
    for override in overrides or []:
        _apply_override(raw, override)
    raw.data = _interpolate(raw.data, (), raw)
    return raw


class _RecipeYAML(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents that are costly to walk: nesting deeper than
    MAX_DEPTH, aliases that expand to more than MAX_ALIAS_NODES nodes, and an alias inside its
    own anchor (a cyclic document). The safe constructor shares an alias's object instead of
    copying it, so the blow-up would only come later, in code that walks the data; the tree is
    therefore measured here, once per distinct node, while it is composed."""

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self.file = file
        self._depth = 0
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (size, height)
        self._alias_nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None:  # an undefined alias is PyYAML's error to report
                self._count_alias(node, event)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                self._refuse(f"nested more than {MAX_DEPTH} levels deep", self.peek_event())
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. `2024-13-45` or `!!int x`
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({exc})", node.start_mark
            ) from None

    def _count_alias(self, node: yaml.Node, event: yaml.Event) -> None:
        if node.end_mark is None:  # still being composed: the alias sits inside its own anchor
            self._refuse(f"alias *{event.anchor} refers to a node that contains it", event)
        size, height = self._measure(node)
        if self._depth + height > MAX_DEPTH:
            self._refuse(f"alias *{event.anchor} nests the recipe more than {MAX_DEPTH} levels deep", event)
        self._alias_nodes += size
        if self._alias_nodes > MAX_ALIAS_NODES:
            self._refuse(
                f"aliases expand the recipe to more than {MAX_ALIAS_NODES} extra values "
                f"(at *{event.anchor}); write the values out or use fewer nested aliases",
                event,
            )

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        known = self._measured.get(id(node))
        if known is None:
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            else:
                children = []
            measured = [self._measure(child) for child in children]
            known = (1 + sum(s for s, _ in measured), 1 + max((h for _, h in measured), default=0))
            self._measured[id(node)] = known
        return known

    def _refuse(self, message: str, event: yaml.Event) -> None:
        raise BadInput(message, file=self.file, line=event.start_mark.line + 1)


def parse_yaml(text: str, file: str) -> tuple[Any, dict[Key, Position]]:
    """The data of one YAML document and the (file, line) of every key in it.

    Raises BadInput with the line for invalid YAML, duplicate keys and the limits above."""
    loader = None
    try:
        loader = _RecipeYAML(text, file)  # checks the characters at once
        node = loader.get_single_node()
        if node is None:
            return None, {}
        positions: dict[Key, Position] = {}
        _record_positions(node, (), file, positions)
        return loader.construct_document(node), positions
    except yaml.YAMLError as exc:
        raise BadInput(_yaml_problem(exc), file=file, line=_yaml_line(exc, text)) from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        return f"invalid YAML: control character #x{exc.character:02x} is not allowed (is this a text file?)"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if "'\\t'" in problem:
        problem += " (indent with spaces: YAML does not allow tabs)"
    return f"invalid YAML: {problem}"


def _yaml_line(exc: yaml.YAMLError, text: str) -> int | None:
    if isinstance(exc, yaml.reader.ReaderError):
        return text.count("\n", 0, exc.position) + 1
    mark = getattr(exc, "problem_mark", None)
    return mark.line + 1 if mark else None


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[Key, Position]]:
    file = str(path)
    if path.is_dir():
        raise BadInput(f"{path.absolute()} is a directory; expected a recipe file", file=file)
    if not path.is_file():
        raise BadInput(f"recipe file not found: {path.absolute()}", file=file)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise BadInput(f"{size} bytes is too large for a recipe (the limit is {MAX_BYTES})", file=file)
        content = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read the recipe: {exc.strerror}", file=file) from None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        byte = content[exc.start : exc.start + 1].hex()
        raise BadInput(
            f"not UTF-8 text (byte 0x{byte}); save the recipe as UTF-8", file=file, line=line
        ) from None
    data, positions = parse_yaml(text, file)
    if data is None:
        raise BadInput("the recipe is empty", file=file)
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a single {type(data).__name__} value"
        raise BadInput(f"a recipe must be a YAML mapping of keys to values, not {kind}", file=file, line=1)
    return data, positions


def _record_positions(node: yaml.Node, prefix: Key, file: str, out: dict[Key, Position]) -> None:
    """Fill `out` with the line of every key under `node`; refuse a key written twice in one
    mapping (YAML says keys are unique; PyYAML would silently keep the last)."""
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise BadInput("a key must be a plain name, not a list or a mapping", file=file, line=line)
            if key_node.tag == _MERGE_TAG:  # `<<: *defaults`: merged keys, explicit ones win
                for merged in value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]:
                    _record_merged(merged, prefix, file, out)
                continue
            ident = (key_node.tag, str(key_node.value))
            if ident in first:
                dotted = ".".join(prefix + (str(key_node.value),))
                raise BadInput(
                    f"duplicate key (first written at line {first[ident]}); remove one of them",
                    file=file,
                    line=line,
                    key=dotted,
                )
            first[ident] = line
            key = prefix + (str(key_node.value),)
            out[key] = (file, line)
            _record_positions(value_node, key, file, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = prefix + (str(i),)
            out[key] = (file, item.start_mark.line + 1)
            _record_positions(item, key, file, out)


def _record_merged(node: yaml.Node, prefix: Key, file: str, out: dict[Key, Position]) -> None:
    merged: dict[Key, Position] = {}
    _record_positions(node, prefix, file, merged)
    for key, position in merged.items():
        out.setdefault(key, position)


def _read_with_extends(path: Path, chain: tuple[Path, ...]) -> RawRecipe:
    chain = (*chain, path.resolve())
    data, positions = _read_yaml(path)
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return RawRecipe(data, path, positions)
    line = positions.get(("extends",), (str(path), None))[1]
    if not isinstance(parent_ref, str) or not parent_ref.strip():
        raise BadInput("expected a path to another recipe", file=str(path), line=line, key="extends")
    parent_path = path.parent / Path(parent_ref).expanduser()
    if not parent_path.is_file():
        what = "is a directory" if parent_path.is_dir() else "not found"
        raise BadInput(
            f"extended recipe {what}: {parent_path.resolve()}", file=str(path), line=line, key="extends"
        )
    if parent_path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, parent_path.resolve()))
        raise BadInput(f"extends cycle: {cycle}", file=str(path), line=line, key="extends")
    if len(chain) >= MAX_EXTENDS:
        raise BadInput(
            f"extends chain longer than {MAX_EXTENDS} files", file=str(path), line=line, key="extends"
        )
    parent = _read_with_extends(parent_path, chain)
    merged_positions = dict(parent.positions)
    for key in positions:
        # a value that replaces the parent's (anything but a mapping merged into a mapping) takes
        # the parent's positions under it away, so that no key points at a file that no longer
        # holds it
        if not (isinstance(_get(data, key), dict) and isinstance(_get(parent.data, key), dict)):
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
        raise BadInput(f"expected KEY=VALUE, e.g. training.learning_rate=2e-5; got {override!r}", file=_SET)
    dotted, text = override.split("=", 1)
    dotted = dotted.strip()
    key = tuple(dotted.split("."))
    if not all(part.strip() for part in key):
        raise BadInput(f"empty key part in {dotted!r}; expected a dotted key such as data.limit", file=_SET)
    if key[0] == "extends":
        raise BadInput("extends cannot be set from the command line; write it in the recipe", file=_SET)
    where = f"{_SET} {dotted}"
    try:
        value, _ = parse_yaml(text, where) if text.strip() else (None, {})
    except BadInput as exc:
        if not exc.problems or not exc.problems[0].message.startswith("invalid YAML"):
            raise  # a YAML bomb or a too-deep value is refused, not read as text
        value = text  # `--set template=Review: {{ text }}` means the text itself
    set_value(raw, dotted, value, where, _SET)


def set_value(raw: RawRecipe, dotted: str, value: Any, where: str, file: str) -> None:
    """Set one dotted key, as --set does (sections made as needed; a key through a value that is
    not a section is BadInput naming `file`); the key is recorded as written at `where`."""
    key = tuple(dotted.split("."))
    target = raw.data
    for i, part in enumerate(key[:-1]):
        child = target.get(part)
        if child is None:
            child = target[part] = {}
            raw.positions[key[: i + 1]] = (where, None)
        elif not isinstance(child, dict):
            parent = ".".join(key[: i + 1])
            raise BadInput(f"{parent} holds {_kind_of(child)}, not a section of keys", file=file, key=dotted)
        target = child
    target[key[-1]] = value
    raw.positions = {k: v for k, v in raw.positions.items() if k[: len(key)] != key}
    raw.positions[key] = (where, None)


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    return f"the value {value!r}" if len(repr(value)) < 40 else f"a {type(value).__name__}"


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
