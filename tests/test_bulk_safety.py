"""What bulk-infer promises about users' files and rows: no written path is a read path (through
any spelling, symlink or hard link), the errors file is replaced and never truncated in place,
no row is silently dropped or invented (duplicate ids, id types, null fields), templates cannot
take the machine down, and the model fingerprint follows the model's content, not its spelling.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SCRATCH, assert_bad_input, by_id, make_recipe, make_rows, read_jsonl, write, write_jsonl
from conftest import invoke as llmtune

from llmtune.data.templates import Template
from llmtune.errors import BadInput


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (links followed) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------ written paths vs read paths
COLLISIONS: dict[str, tuple[dict[str, Any], list[str], list[str]]] = {
    "errors is the input": (
        {"output": {"path": "out/res.jsonl", "errors": "in.jsonl"}},
        [],
        ["output.errors"],
    ),
    "output is the input": ({"output": {"path": "in.jsonl"}}, [], ["output.path", "in.jsonl"]),
    "output is the input via ..": ({"output": {"path": "out/../in.jsonl"}}, [], ["output.path"]),
    "--output is the input": ({}, ["--output", "{tmp}/in.jsonl"], ["--output", "in.jsonl"]),
    "errors is the output": (
        {"output": {"path": "out/res.jsonl", "errors": "out/res.jsonl"}},
        [],
        ["output.errors", "output.path"],
    ),
    "errors is the csv output's journal": (
        {"output": {"path": "out/res.csv", "errors": "out/res.journal.jsonl"}},
        [],
        ["output.errors", "journal"],
    ),
    "shard part files would be shared": (
        {"output": {"path": "out/res.csv", "errors": "out/res.jsonl"}},
        ["--shard", "0/2"],
        ["--shard part files"],
    ),
    "output matches the input glob": (
        {"input": {"path": "*.jsonl", "id_column": "id"}, "output": {"path": "res.jsonl"}},
        [],
        ["output.path", "*.jsonl"],
    ),
    "errors matches the input glob": (
        {
            "input": {"path": "*.jsonl", "id_column": "id"},
            "output": {"path": "out/res.csv", "errors": "e.jsonl"},
        },
        [],
        ["output.errors", "*.jsonl"],
    ),
    "merge writes over the input": ({"output": {"path": "in.jsonl"}}, ["--merge-shards"], ["output.path"]),
}


@pytest.mark.parametrize("case", list(COLLISIONS))
def test_a_written_path_that_is_a_read_path_is_refused_before_anything_is_touched(
    tmp_path: Path, case: str
) -> None:
    overrides, args, fragments = COLLISIONS[case]
    recipe = make_recipe(tmp_path, rows=5, **overrides)
    before = snapshot(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_bad_input(llmtune("bulk-infer", recipe, *args), *fragments)
    assert snapshot(tmp_path) == before  # the input intact, no lock, no output, no folder
    assert not (tmp_path / "out").exists()


def test_links_to_the_input_are_refused_too(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, rows=5)
    out = tmp_path / "out"
    out.mkdir()
    before = (tmp_path / "in.jsonl").read_bytes()
    (out / "res.jsonl").symlink_to(tmp_path / "in.jsonl")
    assert_bad_input(llmtune("bulk-infer", recipe), "output.path", "in.jsonl")
    (out / "res.jsonl").unlink()
    os.link(tmp_path / "in.jsonl", out / "res.errors.jsonl")  # a hard link: another name, one file
    assert_bad_input(llmtune("bulk-infer", recipe), "errors file", "in.jsonl")
    (out / "res.errors.jsonl").unlink()
    (tmp_path / "inbox").symlink_to(tmp_path, target_is_directory=True)  # a linked folder
    linked = make_recipe(tmp_path, name="linked.yaml", output={"path": "inbox/in.jsonl"})
    assert_bad_input(llmtune("bulk-infer", linked), "output.path")
    assert (tmp_path / "in.jsonl").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == []


def test_another_shards_part_file_as_input_is_refused(tmp_path: Path) -> None:
    part = write_jsonl(tmp_path / "out" / "res.shard-3-of-4.jsonl", make_rows(2))
    recipe = make_recipe(tmp_path, input={"path": "out/res.shard-3-of-4.jsonl", "id_column": "id"})
    assert_bad_input(
        llmtune("bulk-infer", recipe, "--shard", "1/4"), "--shard part files", "res.shard-3-of-4"
    )
    assert [p.name for p in (tmp_path / "out").iterdir()] == [part.name]


def test_the_errors_file_is_replaced_never_truncated_in_place(tmp_path: Path) -> None:
    rows = make_rows(6)
    rows[2]["text"] = None  # a null field fails this row
    write_jsonl(tmp_path / "in.jsonl", rows)
    recipe = make_recipe(tmp_path)
    assert llmtune("bulk-infer", recipe).code == 3
    errors = tmp_path / "out" / "res.errors.jsonl"
    first = errors.read_bytes()
    assert [e["id"] for e in read_jsonl(errors)] == ["r002"]
    os.link(errors, tmp_path / "kept.jsonl")  # a reader holding the old file keeps its content
    rows[2]["text"] = "fixed"
    write_jsonl(tmp_path / "in.jsonl", rows)
    result = llmtune("bulk-infer", recipe, "--json")
    assert result.code == 0 and result.json()["rows_done"] == 1
    assert errors.read_text() == ""  # this run's failures: none
    assert (tmp_path / "kept.jsonl").read_bytes() == first
    assert stat.S_IMODE(errors.stat().st_mode) == 0o666 & ~_umask()  # the user's umask, not 0600
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_output_file_bulk_infer_did_not_write_is_left_alone(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, rows=4)
    foreign = write(tmp_path / "out" / "res.jsonl", '{"name": "a"}\n{"name": "b"}\n{"id": "r000"}\n')
    before = foreign.read_bytes()
    assert_bad_input(llmtune("bulk-infer", recipe), "res.jsonl:1", "not a result row")
    assert foreign.read_bytes() == before


def test_a_complete_last_row_without_its_newline_is_kept(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, rows=8)
    assert llmtune("bulk-infer", recipe, "--limit", "3").code == 0
    out = tmp_path / "out" / "res.jsonl"
    out.write_bytes(out.read_bytes().rstrip(b"\n"))  # e.g. edited by hand
    kept = read_jsonl(out)
    result = llmtune("bulk-infer", recipe, "--json")
    assert result.code == 0 and result.json()["rows_done"] == 5  # the third row is not redone
    assert read_jsonl(out)[:3] == kept and sorted(by_id(out)) == [r["id"] for r in make_rows(8)]


# ------------------------------------------------------------------------ rows and ids
def test_one_id_with_two_contents_is_refused_naming_both_rows(tmp_path: Path) -> None:
    rows = make_rows(4)
    write_jsonl(tmp_path / "in" / "a.jsonl", rows)
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": "r002", "text": "something else"}])
    recipe = make_recipe(tmp_path, input={"path": "in/*.jsonl", "id_column": "id"})
    result = llmtune("bulk-infer", recipe)
    assert_bad_input(result, "a.jsonl:3", "b.jsonl:1", "'r002'", "on_duplicate")
    assert not (tmp_path / "out").exists()
    first = make_recipe(
        tmp_path,
        name="first.yaml",
        input={"path": "in/*.jsonl", "id_column": "id"},
        on_duplicate="first",
        output={"path": "out/res.jsonl", "include_input": True},
    )
    kept = llmtune("bulk-infer", first, "--json")
    assert kept.code == 0, kept.stderr
    assert kept.json()["rows_duplicate"] == 1 and kept.json()["rows_done"] == 4
    assert by_id(tmp_path / "out" / "res.jsonl")["r002"]["text"] == rows[2]["text"]


def test_exact_copies_are_counted_not_run_twice(tmp_path: Path) -> None:
    rows = make_rows(3)
    write_jsonl(tmp_path / "in.jsonl", rows + rows[:2])
    result = llmtune("bulk-infer", make_recipe(tmp_path), "--json")
    assert result.code == 0, result.stderr
    assert (result.json()["rows_done"], result.json()["rows_duplicate"]) == (3, 2)
    without_ids = llmtune(
        "bulk-infer", make_recipe(tmp_path, name="noid.yaml", input={"path": "in.jsonl"}), "--json"
    )
    assert without_ids.code == 0 and without_ids.json()["rows_duplicate"] == 2


def test_ids_keep_their_type_and_1_is_not_the_string_1(tmp_path: Path) -> None:
    rows = [{"id": 1, "text": "one"}, {"id": "1", "text": "one as text"}, {"id": 2.5, "text": "x"}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    recipe = make_recipe(tmp_path)
    result = llmtune("bulk-infer", recipe, "--json")
    assert result.code == 0, result.stderr
    out = tmp_path / "out" / "res.jsonl"
    assert [r["id"] for r in read_jsonl(out)] == [1, "1", 2.5]
    again = llmtune("bulk-infer", recipe, "--json")
    assert again.json()["rows_skipped"] == 3 and again.json()["rows_done"] == 0
    csv = llmtune("bulk-infer", recipe, "--output", tmp_path / "out" / "res.csv")
    assert csv.code == 0, csv.stderr
    ids = [line.split(",")[0] for line in (tmp_path / "out" / "res.csv").read_text().splitlines()[1:]]
    assert len(set(ids)) == 3  # mixed types are written as JSON text, so 1 and "1" stay apart


def test_a_journal_from_before_typed_ids_resumes_without_duplicates(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"row {i}"} for i in range(6)])
    recipe = make_recipe(tmp_path)
    assert llmtune("bulk-infer", recipe, "--limit", "4").code == 0
    out = tmp_path / "out" / "res.jsonl"
    # what older versions wrote: every id as text
    out.write_text("".join(json.dumps({**r, "id": str(r["id"])}) + "\n" for r in read_jsonl(out)))
    result = llmtune("bulk-infer", recipe, "--json")
    assert result.code == 0 and (result.json()["rows_skipped"], result.json()["rows_done"]) == (4, 2)
    assert [r["id"] for r in read_jsonl(out)] == ["0", "1", "2", "3", 4, 5]


def test_null_missing_and_empty_fields_are_row_errors_not_text(tmp_path: Path) -> None:
    rows = make_rows(5)
    rows[1]["text"] = None
    del rows[2]["text"]
    rows[3]["text"] = "   "
    write_jsonl(tmp_path / "in.jsonl", rows)
    recipe = make_recipe(tmp_path, template="{{ text }}")
    result = llmtune("bulk-infer", recipe, "--json")
    assert result.code == 3 and result.json()["rows_failed"] == 3
    errors = {e["id"]: e["reason"] for e in read_jsonl(tmp_path / "out" / "res.errors.jsonl")}
    assert "'text' is null" in errors["r001"] and "'text' is undefined" in errors["r002"]
    assert "prompt is empty" in errors["r003"]
    assert sorted(by_id(tmp_path / "out" / "res.jsonl")) == ["r000", "r004"]
    optional = make_recipe(tmp_path, name="optional.yaml", template="{{ text | default('n/a') }}")
    assert llmtune("bulk-infer", optional, "--output", tmp_path / "o2.jsonl").code == 3  # only the blank one


# ------------------------------------------------------------------------ templates
ATTACKS = {
    "huge repeat": "{{ 'a' * 10**10 }}",
    "huge range": "{% for i in range(10**9) %}x{% endfor %}",
    "nested loops printing": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "huge power": "{{ 9 ** (9 ** 9) }}",
    "filter width": "{{ text | center(10**10) }}",
    "str method width": "{{ text.ljust(10**10) }}",
    "format width": "{{ '{:>10000000000}'.format(text) }}",
    "printf width": "{{ '%10000000000s' % text }}",
    "doubling macro": "{% macro f(s, n) %}{{ f(s ~ s, n - 1) if n else s }}{% endmacro %}{{ f(text, 64) }}",
    "doubling namespace": "{% set ns = namespace(s=text) %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s }}",
    "block that fills": "{% set s %}{% for i in range(100000) %}{{ text * 1000 }}{% endfor %}{% endset %}{{ s }}",
    "join amplifies": "{{ range(100000) | join(text * 1000) }}",
    "replace amplifies": "{{ (text * 100000) | replace(text, text * 1000) }}",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_templates_cannot_build_huge_text(attack: str) -> None:
    template = Template(ATTACKS[attack], where="template")
    with pytest.raises(BadInput) as caught:
        template.render({"text": "abcd"}, where="in.jsonl:7")
    message = str(caught.value)
    assert message.startswith("in.jsonl:7: template: ")
    assert "limit" in message or "Range too big" in message, message


def test_a_template_that_loops_without_output_stops_at_the_time_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import llmtune.data.templates as templates

    monkeypatch.setattr(templates, "MAX_RENDER_SECONDS", 0.2)
    silent = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}done"
    with pytest.raises(BadInput, match="rendering took more than 0.2 s"):
        Template(silent, where="template").render({})
    assert Template("{{ x }}!", where="t").render({"x": 1}) == "1!"  # the timer is gone


def test_ordinary_templates_still_work() -> None:
    source = (
        "{{ q | upper }} {{ 'ab' * 3 }} {{ range(3) | join(',') }} {{ '%5.1f' | format(2) }} "
        "{{ '{:>4}'.format(7) }} {{ ' '.join(words) }} {% for w in words %}[{{ loop.index }}{{ w }}]{% endfor %} "
        "{{ missing | default('-') }} {{ (n + 1) ** 2 }} {{ meta.k }}"
    )
    rendered = Template(source, where="t").render(
        {"q": "hi", "words": ["a", "b"], "n": 2, "meta": {"k": "v"}, "missing": None}
    )
    assert rendered == "HI ababab 0,1,2   2.0    7 a b [1a][2b] - 9 v"


def test_template_attacks_in_bulk_infer_fail_their_rows_and_the_rest_runs(tmp_path: Path) -> None:
    bomb = "{% if id == 'r001' %}{{ 'a' * 10**10 }}{% elif id == 'r002' %}"
    bomb += "{% for i in range(10**9) %}x{% endfor %}{% endif %}{{ text }}"
    result = llmtune("bulk-infer", make_recipe(tmp_path, rows=4, template=bomb), "--json")
    assert result.code == 3, result.stderr
    errors = {e["id"]: e for e in read_jsonl(tmp_path / "out" / "res.errors.jsonl")}
    assert sorted(errors) == ["r001", "r002"]
    assert "over the limit of 1,000,000" in errors["r001"]["reason"]
    assert "Range too big" in errors["r002"]["reason"]
    assert sorted(by_id(tmp_path / "out" / "res.jsonl")) == ["r000", "r003"]


def test_template_attacks_are_bad_input_in_prompt_eval(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "test.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    recipe = {
        "kind": "prompt-eval",
        "models": {"tiny": SCRATCH},
        "data": {"test": "test.jsonl"},
        "labels": ["x", "y"],
        "prompts": {"bomb": {"template": "{{ text * 10**10 }}"}},
        "output": {"dir": "run"},
    }
    path = write(tmp_path / "eval.yaml", yaml.safe_dump(recipe))
    assert_bad_input(llmtune("prompt-eval", path), "prompts.bomb.template", "over the limit")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_template_attacks_are_bad_input_in_training_data(tmp_path: Path, task: str) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": t[0]} for t in ("ab", "ba", "aa", "bb")])
    architecture = "bert" if task == "classification" else "llama"
    recipe = {
        "kind": "finetune",
        "task": task,
        "model": {"scratch": {**SCRATCH["scratch"], "architecture": architecture}},
        "data": {"train": "train.jsonl", "template": "{% for i in range(10**9) %}{{ text }}{% endfor %}"},
        "method": {"type": "full"},
        "training": {"max_steps": 2, "batch_size": 2},
        "output": {"dir": "run"},
    }
    path = write(tmp_path / "ft.yaml", yaml.safe_dump(recipe))
    assert_bad_input(llmtune("finetune", path), "data.template", "Range too big")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ fingerprints
def test_the_model_fingerprint_follows_content_not_spelling(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    spec = ScratchModel(**SCRATCH["scratch"])
    tokenizer = build_tokenizer(spec, [])
    build_scratch_model(spec, tokenizer, head="causal_lm", labels=None).save_pretrained(
        tmp_path / "models" / "m"
    )
    tokenizer.save_pretrained(tmp_path / "models" / "m")
    (tmp_path / "app").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "models", target_is_directory=True)
    spellings = ["../models/m", "../app/../models/m", str(tmp_path / "models" / "m"), "../alias/m"]

    def fingerprint(spelling: str, name: str = "job.yaml") -> str:
        recipe = make_recipe(tmp_path / "app", rows=3, name=name, model={"path": spelling})
        result = llmtune("bulk-infer", recipe, "--dry-run", "--json")
        assert result.code == 0, result.stderr
        return result.json()["model_fingerprint"]

    assert (
        llmtune("bulk-infer", make_recipe(tmp_path / "app", rows=3, model={"path": spellings[0]})).code == 0
    )
    moved = make_recipe(tmp_path / "app", rows=3, name="moved.yaml", model={"path": spellings[1]})
    plan = llmtune("bulk-infer", moved, "--dry-run", "--json").json()
    assert (plan["stale"], plan["to_do"]) == (0, 0)  # another spelling: nothing to recompute
    first = {fingerprint(s) for s in spellings}
    assert len(first) == 1
    write(tmp_path / "models" / "m" / "notes.jsonl", "{}\n")  # an output kept in the folder: fine
    assert fingerprint(spellings[0]) in first
    weights = tmp_path / "models" / "m" / "model.safetensors"
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + torch.ones_like(tensors[name])
    save_file(tensors, weights, metadata={"format": "pt"})
    assert fingerprint(spellings[0]) not in first
