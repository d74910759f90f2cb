"""How a recipe writes paths: `RecipePath` and its kinds (a model folder or hub id, a template
file or text), and rebasing the relative paths a recipe inherits through `extends` onto its own
folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, GetCoreSchemaHandler
from pydantic_core import PydanticSerializationUnexpectedValue, core_schema


class RecipePath(str):
    """A path written in a recipe, relative to the file that writes it.

    Every recipe field that holds a path has this type (or a subclass), so that the loader can
    find them all: a relative path inherited through `extends` is rewritten to be relative to the
    extending recipe, and `RecipeBase.resolve_path` then resolves every path the same way."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        # dumped as a plain str, so that yaml.safe_dump and friends never see the subclass
        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(_plain),
        )

    def names_a_path(self, folder: Path) -> bool:
        """Whether this value is a path (and not, say, a hub id) when written in `folder`."""
        return bool(self.strip())


def _plain(value: Any) -> str:
    """A path as a plain str. Anything else is refused, so that in a union such as `path | list of
    paths` the list is serialised by its own member, not turned into the text of a list."""
    if not isinstance(value, str):
        raise PydanticSerializationUnexpectedValue(f"expected a path, got {type(value).__name__}")
    return str(value)


class ModelPath(RecipePath):
    """A hub id such as Qwen/Qwen2.5-0.5B, or a local model folder."""

    def names_a_path(self, folder: Path) -> bool:
        """A folder when it is written as one (./ ../) or exists beside the declaring file."""
        return self.startswith(("./", "../")) or (bool(self.strip()) and (folder / self).exists())


class TemplateSource(RecipePath):
    """Template text, or a .jinja / .j2 file holding it."""

    def names_a_path(self, folder: Path) -> bool:
        """Only a value ending in .jinja or .j2 names a file."""
        return self.endswith((".jinja", ".j2"))


DeclaredIn = Callable[[tuple[str, ...]], Path | None]


def rebase_paths(value: Any, key: tuple[str, ...], declared_in: DeclaredIn, root: Path) -> Any:
    """`value` with every relative `RecipePath` under it that another file declared rewritten
    relative to `root` (the recipe's folder). `declared_in(key)` is the file that wrote `key`."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = rebase_paths(old, (*key, name), declared_in, root)
            if new is not old:
                setattr(value, name, new)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            value[i] = rebase_paths(item, (*key, str(i)), declared_in, root)
    elif isinstance(value, dict):
        for name, item in value.items():
            value[name] = rebase_paths(item, (*key, str(name)), declared_in, root)
    elif isinstance(value, RecipePath):
        return _rebased(value, declared_in(key), root)
    return value


def _rebased(value: RecipePath, file: Path | None, root: Path) -> RecipePath:
    if file is None or value.startswith(("/", "~")):
        return value
    folder = file.parent.resolve()
    if folder == root or not value.names_a_path(folder):
        return value
    return type(value)(os.path.relpath(folder / value, root))
