"""How many tokens a model can see at once, read from its config before any weights load, so
that a generation budget it cannot hold is refused at plan time (exit 2) instead of failing every
row while the job runs."""

from __future__ import annotations

from typing import Any

from llmtune.errors import BadInput
from llmtune.recipes.common import ModelRef, RecipeBase

# config keys that name the longest sequence, in the order transformers' model families use them
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def max_positions(ref: ModelRef, recipe: RecipeBase, key: str) -> int | None:
    """The longest sequence `ref` accepts, from its config.json (or scratch spec); None when its
    config does not say."""
    from llmtune.models.info import inspect_model, read_config

    if ref.scratch is not None:
        return ref.scratch.max_position_embeddings
    info = inspect_model(ref, recipe, key)
    if info.path is None or not (info.path / "config.json").exists():
        return None
    return _positions(read_config(info.path / "config.json"))


def _positions(config: dict[str, Any]) -> int | None:
    for name in POSITION_KEYS:
        if isinstance(config.get(name), int) and config[name] > 0:
            return config[name]
    text = config.get("text_config")
    return _positions(text) if isinstance(text, dict) else None


def check_new_tokens(
    recipe: RecipeBase, ref: ModelRef, max_new_tokens: int, key: str, model_key: str = "model"
) -> None:
    """Refuse (BadInput, naming `key`) a max_new_tokens that leaves the model no room for even one
    prompt token: every row would fail while the job runs."""
    limit = max_positions(ref, recipe, model_key)
    if limit is not None and max_new_tokens >= limit:
        raise BadInput(
            f"{max_new_tokens} new tokens do not fit {ref.describe()}, which sees at most {limit} tokens "
            f"(prompt and answer together); set {key} below {limit}",
            file=str(recipe.source) if recipe.source else None,
            key=key,
        )
