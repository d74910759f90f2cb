"""`llmtune bulk-infer` as cron runs it: resume, kill -9, torn lines, the lock, failed rows,
stale rows, shards, formats and bad input. Tiny scratch models keep each run to seconds.

Most runs go through the CLI in-process (typer's runner: same verbs, options and exit codes,
without paying the torch import per run); the README-style run and kill -9 use a real process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    SCRATCH,
    assert_bad_input,
    by_id,
    make_recipe,
    make_rows,
    read_jsonl,
    run_cli,
    start_cli,
    varied_weights,
    write,
    write_jsonl,
)
from conftest import invoke as llmtune

from llmtune.outputs import OutputLock

ROOT = Path(__file__).resolve().parent.parent


def test_generate_writes_every_id_once_and_a_rerun_skips_them(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, rows=24)
    with (tmp_path / "in.jsonl").open("a") as f:  # the same row twice is computed once
        f.write(json.dumps(make_rows(1)[0]) + "\n")
    first = run_cli("bulk-infer", recipe, "--json")
    assert first.code == 0, first.stderr
    out = tmp_path / "out" / "res.jsonl"
    rows = by_id(out)
    assert sorted(rows) == [r["id"] for r in make_rows(24)]
    assert all(set(r) == {"id", "output", "model_fingerprint", "prompt_fingerprint"} for r in rows.values())
    summary = first.json()
    assert (summary["rows_done"], summary["rows_failed"], summary["exit_code"]) == (24, 0, 0)
    assert summary["generated_tokens"] > 0
    assert "rows/s" in first.stderr and "bulk-infer summary" in first.stderr  # plain log lines
    before = out.read_bytes()
    again = llmtune("bulk-infer", recipe, "--json")
    assert again.code == 0 and again.json()["rows_done"] == 0 and again.json()["rows_skipped"] == 24
    assert out.read_bytes() == before


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_equals_a_clean_run(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, rows=150, batching={"chunk_rows": 5})
    clean = llmtune("bulk-infer", recipe, "--output", tmp_path / "clean" / "res.jsonl")
    assert clean.code == 0, clean.stderr
    out = tmp_path / "out" / "res.jsonl"
    proc = start_cli("bulk-infer", str(recipe), stderr=subprocess.DEVNULL)
    while not (out.exists() and out.read_bytes().count(b"\n") >= 20):
        assert proc.poll() is None, "the run ended before it was killed"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert out.read_bytes().count(b"\n") < 150, "killed too late to test anything"
    rerun = llmtune("bulk-infer", recipe)
    assert rerun.code == 0, rerun.stderr
    assert by_id(out) == by_id(tmp_path / "clean" / "res.jsonl")


def test_torn_last_line_is_repaired_and_limit_caps_new_rows(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, rows=20)
    assert llmtune("bulk-infer", recipe, "--limit", "6").code == 0
    out = tmp_path / "out" / "res.jsonl"
    assert len(read_jsonl(out)) == 6
    kept = out.read_text()
    with out.open("a") as f:
        f.write('{"id": "r006", "output": "half a ro')  # what a crash mid-write leaves
    result = llmtune("bulk-infer", recipe)
    assert result.code == 0, result.stderr
    assert "repaired" in result.stderr
    assert out.read_text().startswith(kept)
    assert sorted(by_id(out)) == [r["id"] for r in make_rows(20)]


def test_overlapping_run_exits_75_and_touches_nothing(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path)
    lock = OutputLock(tmp_path / "out" / "res.jsonl.lock")
    lock.acquire()  # what a run still going from the previous cron tick holds
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    try:
        result = llmtune("bulk-infer", recipe)
        after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    finally:
        lock.discard()
    assert result.code == 75
    assert "held by" in result.stderr
    assert after == before


def test_failed_rows_go_to_the_errors_file_and_exit_3(tmp_path: Path) -> None:
    rows = make_rows(12)
    for row in rows[::3]:
        row["product"] = "kettle"  # the template needs it; the other rows fail
    rows[3]["text"] = "very long " * 40
    write_jsonl(tmp_path / "in.jsonl", rows)
    common = {"template": "{{ product }}: {{ text }}", "max_length": 64}
    result = llmtune("bulk-infer", make_recipe(tmp_path, on_too_long="error", **common), "--json")
    assert result.code == 3, result.stderr
    done = by_id(tmp_path / "out" / "res.jsonl")
    errors = {e["id"]: e for e in read_jsonl(tmp_path / "out" / "res.errors.jsonl")}
    assert sorted(done) == ["r000", "r006", "r009"]
    assert "over max_length 64" in errors["r003"]["reason"]
    assert "product" in errors["r001"]["reason"] and errors["r001"]["where"].endswith("in.jsonl:2")
    assert len(done) + len(errors) == 12 and result.json()["rows_failed"] == 9
    skip = llmtune("bulk-infer", make_recipe(tmp_path, on_too_long="skip", **common), "--json")
    assert skip.code == 3 and skip.json()["rows_too_long_skipped"] == 1 and skip.json()["rows_failed"] == 8
    rows = [{**r, "product": "kettle"} for r in rows]
    write_jsonl(tmp_path / "in.jsonl", rows)
    fixed = llmtune("bulk-infer", make_recipe(tmp_path, on_too_long="truncate", **common), "--json")
    assert fixed.code == 0 and fixed.json()["rows_done"] == 9
    assert sorted(by_id(tmp_path / "out" / "res.jsonl")) == [r["id"] for r in rows]
    assert (tmp_path / "out" / "res.errors.jsonl").read_text() == ""  # this run's failures only


def test_refresh_stale_recomputes_rows_of_another_prompt(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, rows=10)
    assert llmtune("bulk-infer", recipe).code == 0
    out = tmp_path / "out" / "res.jsonl"
    old = by_id(out)
    new_template = ["--set", "template='Question: {{ text }}'"]  # a YAML value: quoted
    plan = llmtune("bulk-infer", recipe, *new_template, "--dry-run", "--json")
    assert plan.code == 0 and (plan.json()["stale"], plan.json()["to_do"]) == (10, 0)
    assert "--refresh stale" in plan.stderr
    assert by_id(out) == old  # a dry run writes nothing
    refreshed = llmtune("bulk-infer", recipe, *new_template, "--refresh", "stale", "--json")
    assert refreshed.code == 0 and refreshed.json()["rows_done"] == 10
    new = by_id(out)
    assert sorted(new) == sorted(old)
    assert {r["prompt_fingerprint"] for r in new.values()} == {plan.json()["prompt_fingerprint"]}
    assert {r["prompt_fingerprint"] for r in old.values()}.isdisjoint({plan.json()["prompt_fingerprint"]})


def test_shards_split_the_ids_and_merge_into_a_clean_run(tmp_path: Path) -> None:
    rows = make_rows(30)
    lines = ["id,text"] + [f"{r['id']},{r['text']}" for r in rows]
    write(tmp_path / "in" / "part1.csv", "\n".join(lines[:16]) + "\n")
    write(tmp_path / "in" / "part2.csv", "\n".join([lines[0], *lines[16:]]) + "\n")
    recipe = make_recipe(
        tmp_path,
        input={"path": "in/*.csv", "id_column": "id"},
        output={"path": "out/res.parquet", "include_input": True},
    )
    clean = llmtune("bulk-infer", recipe, "--output", tmp_path / "clean" / "res.parquet")
    assert clean.code == 0, clean.stderr
    parts = []
    for i in range(2):
        result = llmtune("bulk-infer", recipe, "--shard", f"{i}/2")
        assert result.code == 0, result.stderr
        parts.append(set(by_id(tmp_path / "out" / f"res.shard-{i}-of-2.jsonl")))
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    assert parts[0] | parts[1] == {r["id"] for r in rows}
    merged = llmtune("bulk-infer", recipe, "--merge-shards", "--json")
    assert merged.code == 0 and merged.json()["rows"] == 30 and merged.json()["missing_shards"] == []
    import pyarrow.parquet as pq

    def table(path: Path) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in pq.read_table(path).to_pylist()}

    got = table(tmp_path / "out" / "res.parquet")
    assert got == table(tmp_path / "clean" / "res.parquet")
    assert got["r004"]["text"] == rows[4]["text"]  # include_input


def test_classify_with_a_causal_lm_and_with_a_classifier_head(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmtune.models.loading import resolve_model_path
    from llmtune.recipes.common import ModelRef, RecipeBase

    labels = ["negative", "positive"]
    causal = make_recipe(tmp_path, task="classify", labels=labels, template="Review: {{ text }}\nSentiment:")
    result = llmtune("bulk-infer", causal, "--output", tmp_path / "out" / "causal.csv")
    assert result.code == 0, result.stderr
    import csv

    with (tmp_path / "out" / "causal.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 30
    for row in table:
        scores = {label: float(row[f"score_{label}"]) for label in labels}
        assert sum(scores.values()) == pytest.approx(1.0) and row["label"] == max(scores, key=scores.get)

    # the real pre-trained MiniLM encoder with a (new) classification head, saved as a user would
    base = resolve_model_path(
        ModelRef(path="sentence-transformers/all-MiniLM-L6-v2"), RecipeBase(kind="x"), "m"
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}
    )
    model.save_pretrained(tmp_path / "minilm-cls")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "minilm-cls")
    head = make_recipe(
        tmp_path,
        name="head.yaml",
        model={"path": "minilm-cls"},
        task="classify",
        labels=["positive", "negative"],
    )
    result = llmtune("bulk-infer", head, "--output", tmp_path / "out" / "head.jsonl")
    assert result.code == 0, result.stderr
    for record in read_jsonl(tmp_path / "out" / "head.jsonl"):
        assert list(record["scores"]) == ["positive", "negative"]
        assert sum(record["scores"].values()) == pytest.approx(1.0)
    plain = make_recipe(
        tmp_path,
        name="plain.yaml",
        model={"path": "sentence-transformers/all-MiniLM-L6-v2"},
        task="classify",
        labels=labels,
    )
    assert_bad_input(llmtune("bulk-infer", plain), "neither a causal LM nor a classifier")


BAD = {
    "template field": ({"template": "{{ review }}"}, [], "template uses review"),
    "bad shard": ({}, ["--shard", "2/2"], "--shard"),
    "no chat template": ({"chat": True}, [], "no chat template"),
    "missing model": ({"model": {"path": "models/none"}}, [], "models/none' not found"),
    "no id": ({"input": {"path": "in.jsonl", "id_column": "key"}}, [], "in.jsonl:1"),
    "output format": ({"output": {"path": "out/res.txt"}}, [], "output.path"),
    "greedy copies": ({"generation": {"num_return_sequences": 2}}, [], "needs sampling"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, case: str) -> None:
    overrides, args, message = BAD[case]
    recipe = make_recipe(tmp_path, **overrides)
    assert_bad_input(llmtune("bulk-infer", recipe, *args), message)
    assert not (tmp_path / "out").exists()


def test_a_garbled_input_line_is_bad_input_with_its_line(tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", '{"id": 1, "text": "ok"}\n{"id": 2, "text": \n')
    assert_bad_input(llmtune("bulk-infer", make_recipe(tmp_path)), "in.jsonl:2", "invalid JSON")
    assert not (tmp_path / "out").exists()


def test_shipped_recipes_validate() -> None:
    recipes = sorted((ROOT / "recipes").glob("bulk-infer-*.yaml"))
    assert len(recipes) >= 2
    result = llmtune("validate", *recipes)
    assert result.code == 0, result.stderr


def test_chat_models_get_their_chat_template_and_system_message(tmp_path: Path) -> None:
    from llmtune.inference.engine import Engine
    from llmtune.models.loading import load_model
    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ModelRef, RecipeBase, ScratchModel

    spec = ScratchModel(**SCRATCH["scratch"])
    tokenizer = build_tokenizer(spec, [])
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    model = varied_weights(build_scratch_model(spec, tokenizer, head="causal_lm", labels=None))
    model.save_pretrained(tmp_path / "chat")
    tokenizer.save_pretrained(tmp_path / "chat")
    recipe = make_recipe(tmp_path, rows=6, model={"path": "chat"}, chat=True, system="Answer briefly.")
    result = llmtune("bulk-infer", recipe)
    assert result.code == 0, result.stderr
    engine = Engine(load_model(ModelRef(path=str(tmp_path / "chat")), RecipeBase(kind="x"), head="causal_lm"))
    prompts = [engine.apply_chat_template(f"Q: {r['text']}\nA:", "Answer briefly.") for r in make_rows(6)]
    assert prompts[0].startswith("<|system|>Answer briefly.\n<|user|>Q: ")
    expected = [g.texts[0] for g in engine.generate(prompts, max_new_tokens=6)]
    got = by_id(tmp_path / "out" / "res.jsonl")
    assert [got[r["id"]]["output"] for r in make_rows(6)] == expected
    # the template made a difference: the same rows without it give other outputs
    plain = [
        g.texts[0] for g in engine.generate([f"Q: {r['text']}\nA:" for r in make_rows(6)], max_new_tokens=6)
    ]
    assert plain != expected
