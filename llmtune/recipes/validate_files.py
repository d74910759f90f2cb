"""`llmtune validate`: check recipe files without running them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from llmtune.errors import BadInput
from llmtune.recipes import load_recipe


def validate_files(paths: list[Path], sets: list[str] | None, *, show: bool, as_json: bool) -> bool:
    """`llmtune validate`: load each recipe; one line per file (errors on stderr), the resolved
    recipe when asked (or for a single file); whether all were valid."""
    failed = 0
    for path in paths:
        try:
            recipe = load_recipe(path, sets)
        except BadInput as exc:
            failed += 1
            for line in str(exc).splitlines():
                print(f"error: {line}", file=sys.stderr)
            continue
        dump = recipe.model_dump(mode="json")
        if as_json:
            print(json.dumps({"file": str(path), "recipe": dump}))
        elif show or len(paths) == 1:
            print(f"# {path}: ok ({recipe.kind})")
            print(yaml.safe_dump(dump, sort_keys=False), end="")
        else:
            print(f"{path}: ok ({recipe.kind})")
    if len(paths) > 1 and not as_json:
        print(f"{len(paths) - failed} of {len(paths)} recipes valid", file=sys.stderr)
    return not failed
