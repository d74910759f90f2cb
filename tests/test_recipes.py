"""The recipe engine: YAML with line numbers, extends, --set, ${ENV}, strict validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import run_cli, write

from llmtune.errors import BadInput
from llmtune.recipes import RECIPE_KINDS, FinetuneRecipe, load_recipe
from llmtune.recipes.starter import starter_recipe

BASE = """\
kind: finetune
model:
  path: sentence-transformers/all-MiniLM-L6-v2
data:
  train: train.jsonl
  columns: {text: review, label: sentiment}
training:
  learning_rate: 1.0e-4
  epochs: 2
"""


def problems(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(BadInput) as info:
        load_recipe(path, overrides)
    return str(info.value)


def test_loads_and_fills_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path / "sentiment.yaml", BASE))
    assert isinstance(recipe, FinetuneRecipe)
    assert recipe.name == "sentiment"  # the file's stem
    assert recipe.training.learning_rate == 1e-4
    assert recipe.method.type == "lora"
    assert recipe.resolve_path("train.jsonl") == tmp_path / "train.jsonl"


def test_extends_deep_merges_and_replaces_lists(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", BASE + "labels: [a, b, c]\n")
    child = write(
        tmp_path / "sub" / "child.yaml", "extends: ../base.yaml\ntraining: {epochs: 5}\nlabels: [x, y]\n"
    )
    recipe = load_recipe(child)
    assert recipe.training.epochs == 5
    assert recipe.training.learning_rate == 1e-4  # kept from base
    assert recipe.labels == ["x", "y"]  # list replaced, not merged
    assert recipe.model.path == "sentence-transformers/all-MiniLM-L6-v2"


def test_extends_chain_and_cycle(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "extends: b.yaml\n" + BASE)
    write(tmp_path / "b.yaml", "extends: c.yaml\nseed: 1\n")
    write(tmp_path / "c.yaml", "extends: a.yaml\nseed: 2\n")
    message = problems(tmp_path / "a.yaml")
    assert "extends cycle" in message and "a.yaml" in message


def test_set_overrides_after_extends_parsed_as_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", BASE)
    recipe = load_recipe(
        path, ["training.learning_rate=2e-5", "method.type=dora", "data.limit=100", "labels=[neg, pos]"]
    )
    assert recipe.training.learning_rate == 2e-5
    assert recipe.method.type == "dora"
    assert recipe.data.limit == 100
    assert recipe.labels == ["neg", "pos"]


def test_set_with_a_bad_value_names_the_flag(tmp_path: Path) -> None:
    message = problems(write(tmp_path / "r.yaml", BASE), ["training.epochs=many"])
    assert "--set training.epochs" in message


def test_env_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_DIR", "/srv/data")
    monkeypatch.delenv("MISSING_VAR", raising=False)
    text = (
        BASE.replace("train: train.jsonl", "train: ${DATA_DIR}/train.jsonl")
        + "output: {dir: '${OUT_ROOT:-runs}/{name}'}\n"
    )
    recipe = load_recipe(write(tmp_path / "r.yaml", text))
    assert recipe.data.train == "/srv/data/train.jsonl"
    assert recipe.output.dir == "runs/{name}"
    bad = write(tmp_path / "bad.yaml", BASE + "name: ${MISSING_VAR}\n")
    assert "MISSING_VAR is not set" in problems(bad)


def test_every_problem_listed_with_line_and_suggestion(tmp_path: Path) -> None:
    text = BASE.replace("learning_rate: 1.0e-4", "learing_rate: 1.0e-4\n  batch_size: lots")
    message = problems(write(tmp_path / "r.yaml", text))
    lines = message.splitlines()
    assert len(lines) == 2
    assert (
        f"{tmp_path / 'r.yaml'}:8: training.learing_rate: unknown key (did you mean 'learning_rate'?)"
        in message
    )
    assert ":9: training.batch_size:" in message and "valid integer" in message


def test_malformed_yaml_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", "kind: finetune\nmodel:\n  path: [unclosed\ndata: {}\n")
    message = problems(path)
    assert "invalid YAML" in message and str(path) in message


def test_cross_field_rules(tmp_path: Path) -> None:
    text = BASE.replace("  columns:", "  split: {validation: 0.6, test: 0.5}\n  columns:")
    assert "validation + test must be below 1" in problems(write(tmp_path / "r.yaml", text))
    text = BASE.replace("kind: finetune", "kind: bulk-infer")
    assert "unknown key" in problems(write(tmp_path / "b.yaml", text))
    bulk = "kind: bulk-infer\nmodel: {path: m}\ninput: {path: x.jsonl}\ntask: classify\noutput: {path: o.jsonl}\n"
    # labels may be omitted: a classification head brings its own (checked when the model is read)
    assert load_recipe(write(tmp_path / "c.yaml", bulk)).labels is None
    both = BASE.replace(
        "path: sentence-transformers/all-MiniLM-L6-v2", "path: x\n  scratch: {hidden_size: 32}"
    )
    assert "exactly one of path or scratch" in problems(write(tmp_path / "d.yaml", both))


def test_kind_mismatch_and_unknown_kind(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", BASE)
    with pytest.raises(BadInput, match="run it with `llmtune finetune`"):
        load_recipe(path, expected_kind="bulk-infer")
    assert "unknown kind" in problems(write(tmp_path / "k.yaml", "kind: finetuning\n"))


@pytest.mark.parametrize("kind", list(RECIPE_KINDS))
def test_init_starter_is_a_valid_commented_recipe(kind: str, tmp_path: Path) -> None:
    text = starter_recipe(kind, RECIPE_KINDS[kind])
    # every top-level key is there, with its docstring as the comment above it
    comments = " ".join(
        line.strip().lstrip("#").strip() for line in text.splitlines() if line.strip().startswith("#")
    )
    comments = " ".join(comments.split())
    for name, field in RECIPE_KINDS[kind].model_fields.items():
        if name in ("kind", "extends") or not field.description:
            continue
        assert f"\n{name}:" in "\n" + text, name
        opening = " ".join(field.description.split()[:6])
        assert opening in comments, (name, opening)
    recipe = load_recipe(write(tmp_path / f"{kind}.yaml", text))
    assert recipe.kind == kind
    assert yaml.safe_load(text)["kind"] == kind


@pytest.mark.parametrize("kind", list(RECIPE_KINDS))
def test_schema_describes_every_field(kind: str) -> None:
    schema = RECIPE_KINDS[kind].model_json_schema()
    assert schema["additionalProperties"] is False

    def described(prop: dict) -> bool:  # a section's description may sit on its $ref target
        ref = prop.get("$ref", "").rsplit("/", 1)[-1]
        return bool(prop.get("description") or schema.get("$defs", {}).get(ref, {}).get("description"))

    undocumented = [name for name, prop in schema["properties"].items() if not described(prop)]
    assert undocumented == []


def test_starter_writes_multiline_templates_as_blocks_that_read_back_exactly(tmp_path: Path) -> None:
    from llmtune.recipes.starter import EXAMPLES

    text = starter_recipe("prompt-eval", RECIPE_KINDS["prompt-eval"])
    assert "    template: |" in text and "\\n" not in text
    recipe = load_recipe(write(tmp_path / "pe.yaml", text))
    expected = EXAMPLES["prompt-eval"]["prompts"]["instructed"]
    assert recipe.prompts["instructed"].template == expected["template"]
    assert recipe.judge is not None and "\n" in recipe.judge.template  # the default, as a block


def test_a_list_of_paths_prints_and_records_as_a_list(tmp_path: Path) -> None:
    """A path | list-of-paths field is written back as a YAML list (validate --print, a run's
    recipe.yaml), never as the text of a Python list, however often recipes are loaded."""
    path = write(
        tmp_path / "r.yaml",
        "kind: finetune\nmodel: {scratch: {architecture: bert}}\n"
        "data: {train: [a.jsonl, b.jsonl], test: c.jsonl}\n",
    )
    for sets in ([], None, ["seed=3"]):
        dumped = load_recipe(path, sets).model_dump(mode="json")["data"]
        assert dumped["train"] == ["a.jsonl", "b.jsonl"] and dumped["test"] == "c.jsonl"
    printed = yaml.safe_load(run_cli("validate", str(path), "--print").stdout)
    assert printed["data"]["train"] == ["a.jsonl", "b.jsonl"]


def test_the_starter_s_commented_examples_validate_when_switched_on(tmp_path: Path) -> None:
    """`llmtune init finetune` shows off-by-default sections (sweep, replay) and the mixture form
    of data.train as commented examples; each, switched on, is a valid recipe."""
    from llmtune.recipes.starter import ALTERNATIVES, COMMENTED

    text = starter_recipe("finetune", FinetuneRecipe)
    assert "# sweep:" in text and "#   strategy: tpe" in text and "# - {path: data/task_a.jsonl" in text
    base = yaml.safe_load(text)
    for changes in (COMMENTED["finetune"], ALTERNATIVES["finetune"]):
        data = {**base, "data": dict(base["data"])}
        for key, value in changes.items():
            if key in data["data"]:
                data["data"][key] = value
            else:
                data[key] = value
        recipe = load_recipe(write(tmp_path / "r.yaml", yaml.safe_dump(data)))
        assert recipe.kind == "finetune"
    assert recipe.data.is_mixture()
