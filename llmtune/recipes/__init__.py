"""Recipes: pydantic models (one module per kind) and loading a YAML file into one of them.

`load_recipe` is the single entry point: read YAML (with extends, --set, ${ENV}), pick the model
by `kind`, validate strictly, and raise `BadInput` listing every problem with file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llmtune.errors import BadInput
from llmtune.recipes.bulk_infer import BulkInferRecipe
from llmtune.recipes.common import RecipeBase
from llmtune.recipes.distill import DistillRecipe
from llmtune.recipes.finetune import FinetuneRecipe
from llmtune.recipes.loader import RawRecipe, read_recipe, set_value
from llmtune.recipes.paths import RecipePath, rebase_paths
from llmtune.recipes.problems import problems_from
from llmtune.recipes.prompt_eval import PromptEvalRecipe
from llmtune.recipes.rlhf import RlhfRecipe

RECIPE_KINDS: dict[str, type[RecipeBase]] = {
    "finetune": FinetuneRecipe,
    "distill": DistillRecipe,
    "rlhf": RlhfRecipe,
    "prompt-eval": PromptEvalRecipe,
    "bulk-infer": BulkInferRecipe,
}

__all__ = [
    "RECIPE_KINDS",
    "json_schema",
    "with_changes",
    "RecipeBase",
    "RecipePath",
    "load_recipe",
    "BulkInferRecipe",
    "DistillRecipe",
    "FinetuneRecipe",
    "PromptEvalRecipe",
    "RlhfRecipe",
]


def load_recipe(
    path: str | Path, overrides: list[str] | None = None, expected_kind: str | None = None
) -> RecipeBase:
    """Read, merge and validate a recipe. Raises BadInput naming file, line and key."""
    raw = read_recipe(path, overrides)
    kind = raw.data.get("kind")
    file, line = raw.where(("kind",))
    if kind is None:
        problem = "is empty" if ("kind",) in raw.positions else "is missing"
        raise BadInput(
            f"required key {problem}; expected one of: {', '.join(RECIPE_KINDS)}",
            file=file,
            line=line,
            key="kind",
        )
    if not isinstance(kind, str) or kind not in RECIPE_KINDS:
        shown = repr(kind) if len(repr(kind)) < 60 else f"a {type(kind).__name__}"
        raise BadInput(
            f"unknown kind {shown}; expected one of: {', '.join(RECIPE_KINDS)}",
            file=file,
            line=line,
            key="kind",
        )
    if expected_kind is not None and kind != expected_kind:
        raise BadInput(
            f"this is a {kind} recipe; run it with `llmtune {kind}`, not `llmtune {expected_kind}`",
            file=file,
            line=line,
            key="kind",
        )
    model = RECIPE_KINDS[kind]
    try:
        recipe = model.model_validate(raw.data)
    except ValidationError as exc:
        raise problems_from(exc, raw, model) from None
    recipe.attach_source(Path(path))
    # a path is relative to the file that writes it, so the ones an extended file wrote are
    # rebased onto this recipe's folder, where everything downstream resolves them
    rebase_paths(recipe, (), raw.declared_in, Path(path).parent.resolve())
    return recipe


def json_schema(kind: str | None = None) -> dict:
    """The JSON Schema of one recipe kind, or of any recipe (one of the kinds), for editors."""
    if kind is not None:
        return _keys_first(RECIPE_KINDS[kind].model_json_schema())
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "llmtune recipe",
        "oneOf": [_keys_first(model.model_json_schema()) for model in RECIPE_KINDS.values()],
    }


def _keys_first(schema: dict) -> dict:
    """The recipe's own keys first, the sections they refer to ($defs) after them."""
    return {k: schema[k] for k in sorted(schema, key=lambda k: k == "$defs")}


def with_changes(recipe: RecipeBase, changes: dict[str, Any], where: str) -> RecipeBase:
    """The validated recipe with dotted keys changed, as `--set` would change them (sweep trials).
    A key the recipe cannot take is BadInput naming `where` (the file that asked for it)."""
    raw = RawRecipe(recipe.model_dump(mode="json"), Path(where))
    for dotted, value in changes.items():
        set_value(raw, dotted, value, f"{where} params.{dotted}", where)
    model = type(recipe)
    try:
        changed = model.model_validate(raw.data)
    except ValidationError as exc:
        raise problems_from(exc, raw, model) from None
    if recipe.source is not None:
        changed.attach_source(recipe.source)
    return changed
