"""The command line as users and CI see it: verbs, exit codes, bad input, the run directory."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, assert_bad_input, invoke, run_cli, write, write_jsonl

WORDS_POS = ["great", "lovely", "superb", "excellent", "fine", "happy"]
WORDS_NEG = ["awful", "broken", "terrible", "poor", "sad", "rude"]


def tiny_data(folder: Path) -> None:
    rows = []
    for i in range(48):
        good = i % 2 == 0
        word = (WORDS_POS if good else WORDS_NEG)[i % 6]
        rows.append(
            {"id": i, "review": f"the service was {word} today", "sentiment": "pos" if good else "neg"}
        )
    write_jsonl(folder / "train.jsonl", rows[:36])
    write_jsonl(folder / "test.jsonl", rows[36:])


def tiny_recipe(folder: Path, extra: str = "") -> Path:
    tiny_data(folder)
    return write(
        folder / "tiny.yaml",
        f"""\
kind: finetune
task: classification
model:
  scratch: {{architecture: bert, hidden_size: 32, num_layers: 2, num_heads: 2}}
labels: [neg, pos]
method: {{type: full}}
data:
  train: train.jsonl
  test: test.jsonl
  columns: {{text: review, label: sentiment}}
  max_length: 32
training: {{max_steps: 4, batch_size: 8, learning_rate: 1.0e-3}}
{extra}""",
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    recipe = tiny_recipe(folder)
    result = run_cli("finetune", recipe, "--json")
    assert result.code == 0, result.stderr[-3000:]
    return folder


def test_version_and_fast_help() -> None:
    assert run_cli("--version").stdout.startswith("llmtune ")
    # --help must not import torch: users type it all the time
    code = "import sys; from llmtune.cli import app; import llmtune.recipes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    result = run_cli("--help")
    for verb in (
        "finetune",
        "distill",
        "rlhf",
        "prompt-eval",
        "bulk-infer",
        "validate",
        "init",
        "rank",
        "schema",
        "env",
        "export",
        "predict",
        "chat",
        "runs",
    ):
        assert verb in result.stdout


def test_env_reports_versions() -> None:
    info = json.loads(run_cli("env", "--json").stdout)
    assert info["torch"] and info["transformers"] and info["peft"] and info["trl"]
    import torch

    assert info["cuda_available"] is torch.cuda.is_available()  # what this machine has, not a guess


def test_validate_every_shipped_recipe() -> None:
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert len(recipes) >= 3
    result = run_cli("validate", *recipes)
    assert result.code == 0, result.stderr
    assert result.stdout.count(": ok (") == len(recipes)


def test_init_writes_a_starter_that_validates_and_never_overwrites(tmp_path: Path) -> None:
    for kind in ("finetune", "distill", "rlhf", "prompt-eval", "bulk-infer"):
        path = tmp_path / f"{kind}.yaml"
        assert run_cli("init", kind, path).code == 0
        assert run_cli("validate", path).code == 0
    before = (tmp_path / "finetune.yaml").read_text()
    assert_bad_input(run_cli("init", "finetune", tmp_path / "finetune.yaml"), "already exists")
    assert (tmp_path / "finetune.yaml").read_text() == before
    assert_bad_input(run_cli("init", "pretrain"), "unknown kind")


def test_schema_is_json_schema() -> None:
    schema = json.loads(run_cli("schema", "finetune").stdout)
    assert schema["properties"]["method"]
    assert len(json.loads(run_cli("schema").stdout)["oneOf"]) == 5


@pytest.mark.slow
def test_run_directory_contents(finished_run: Path) -> None:
    run = finished_run / "runs" / "tiny"
    for name in (
        "recipe.yaml",
        "manifest.json",
        "metrics.jsonl",
        "eval.json",
        "report.md",
        "model/config.json",
    ):
        assert (run / name).exists(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["versions"]["torch"]
    assert manifest["device"].startswith(("cpu", "cuda", "mps")) and manifest["seed"] == 42
    assert all(v.startswith("sha256:") for v in manifest["data_files"].values())
    # the lock file stays (deleting it on release would let two runs lock different files), unheld
    with open(run / ".llmtune.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert json.loads((run / "eval.json").read_text())["metrics"]["n"] == 12


@pytest.mark.slow
def test_finished_run_is_not_clobbered(finished_run: Path) -> None:
    run = finished_run / "runs" / "tiny"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    result = invoke("finetune", finished_run / "tiny.yaml")
    assert_bad_input(result, "holds a finished run", "output.overwrite")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


@pytest.mark.slow
def test_lock_held_exits_75_touching_nothing(finished_run: Path) -> None:
    run = finished_run / "runs" / "tiny"
    with open(run / ".llmtune.lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("pid 1 (test)")
        holder.flush()
        before = (run / "manifest.json").read_text()
        result = run_cli("finetune", finished_run / "tiny.yaml", "--set", "output.overwrite=true")
        assert result.code == 75, result.stderr
        assert (run / "manifest.json").read_text() == before


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    result = invoke("finetune", recipe, "--dry-run", "--json")
    assert result.code == 0, result.stderr
    plan = result.json()
    assert plan["rows"] == {"train": 36, "validation": 0, "test": 12}
    assert 0 < plan["trainable_params"] == plan["total_params"]
    assert not (tmp_path / "runs").exists()


# --- bad input: exit 2, one clear message naming file/line/key, no traceback, nothing written ---
# In this process (`invoke`: the CLI's own error handling, seconds cheaper than a new Python with
# torch); test_bad_malformed_yaml and test_bad_corrupt_jsonl_line check the same in a real process.


def bad(tmp_path: Path, verb: str = "finetune", extra_args: tuple = (), **replace: str):
    recipe = tiny_recipe(tmp_path)
    text = recipe.read_text()
    for old, new in replace.items():
        assert old.replace("__", " ") in text or old in text
        text = text.replace(old, new)
    write(recipe, text)
    result = invoke(verb, recipe, *extra_args)
    assert not (tmp_path / "runs").exists(), "bad input must write nothing"
    return recipe, result


def test_bad_malformed_yaml(tmp_path: Path) -> None:
    recipe, result = bad(tmp_path, **{"labels: [neg, pos]": "labels: [neg, pos"})
    assert_bad_input(result, f"{recipe}:", "invalid YAML")
    assert_bad_input(run_cli("finetune", recipe), f"{recipe}:", "invalid YAML")  # a real process too


def test_bad_unknown_key_with_suggestion(tmp_path: Path) -> None:
    recipe, result = bad(tmp_path, **{"learning_rate": "learnig_rate"})
    assert_bad_input(
        result, f"{recipe}:12: training.learnig_rate: unknown key (did you mean 'learning_rate'?)"
    )


def test_bad_wrong_type(tmp_path: Path) -> None:
    recipe, result = bad(tmp_path, **{"max_length: 32": "max_length: long"})
    assert_bad_input(result, f"{recipe}:11: data.max_length:", "valid integer")


def test_bad_missing_required_key(tmp_path: Path) -> None:
    recipe, result = bad(
        tmp_path,
        **{"model:\n  scratch: {architecture: bert, hidden_size: 32, num_layers: 2, num_heads: 2}\n": ""},
    )
    assert_bad_input(result, "model: required key is missing")


def test_bad_extends_cycle(tmp_path: Path) -> None:
    recipe, result = bad(tmp_path, **{"kind: finetune": "extends: tiny.yaml\nkind: finetune"})
    assert_bad_input(result, "extends cycle")


def test_bad_missing_data_file(tmp_path: Path) -> None:
    _, result = bad(tmp_path, **{"test: test.jsonl": "test: missing.jsonl"})
    assert_bad_input(result, "data file not found", "missing.jsonl", "data.test")


def test_bad_empty_dataset(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    write(tmp_path / "train.jsonl", "")
    result = invoke("finetune", recipe)
    assert_bad_input(result, f"{tmp_path / 'train.jsonl'}", "empty")


def test_bad_corrupt_jsonl_line(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    lines[4] = lines[4][:-3]
    write(tmp_path / "train.jsonl", "\n".join(lines) + "\n")
    assert_bad_input(run_cli("finetune", recipe), f"{tmp_path / 'train.jsonl'}:5: invalid JSON")


def test_bad_template_names_unknown_column(tmp_path: Path) -> None:
    _, result = bad(tmp_path, **{"max_length: 32": "max_length: 32\n  template: 'Review: {{ body }}'"})
    assert_bad_input(result, "data.template", "uses body")


def test_bad_label_not_in_labels(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    rows[3]["sentiment"] = "mixed"
    write_jsonl(tmp_path / "test.jsonl", rows)
    result = invoke("finetune", recipe)
    assert_bad_input(result, f"{tmp_path / 'test.jsonl'}:4", "label 'mixed' is not in labels")


def test_bad_kind_does_not_match_verb(tmp_path: Path) -> None:
    _, result = bad(tmp_path, verb="bulk-infer")
    assert_bad_input(result, "this is a finetune recipe; run it with `llmtune finetune`")


def test_bad_unknown_model_path(tmp_path: Path) -> None:
    _, result = bad(
        tmp_path,
        **{
            "scratch: {architecture: bert, hidden_size: 32, num_layers: 2, num_heads: 2}": "path: nobody/no-such-model"
        },
    )
    assert_bad_input(result, "model.path", "nobody/no-such-model", "not found", "Hugging Face cache")


def test_bad_local_model_folder(tmp_path: Path) -> None:
    _, result = bad(
        tmp_path,
        **{
            "scratch: {architecture: bert, hidden_size: 32, num_layers: 2, num_heads: 2}": "path: ./models/missing"
        },
    )
    assert_bad_input(result, "model folder not found")


def test_bad_qlora_on_cpu(tmp_path: Path) -> None:
    _, result = bad(tmp_path, **{"method: {type: full}": "method: {type: qlora}"})
    assert_bad_input(result, "qlora needs a CUDA GPU")


def test_debug_shows_traceback(tmp_path: Path) -> None:
    recipe, result = bad(tmp_path, **{"test: test.jsonl": "test: missing.jsonl"})
    debug = run_cli("finetune", recipe, "--debug")
    assert debug.code == 2 and "Traceback" in debug.stderr


def test_init_shows_the_engines_and_the_distributed_section(tmp_path: Path) -> None:
    """`llmtune init` covers issue 14's keys: engine/ray/vllm for bulk-infer (and rlhf collect),
    distributed for the training verbs; a starter switched to engine: ray still validates."""
    bulk = tmp_path / "bulk.yaml"
    assert run_cli("init", "bulk-infer", bulk).code == 0
    text = bulk.read_text()
    for key in ("\nengine: hf", "\nray:", "  replicas: 2", "\nvllm:", "  enforce_eager: false"):
        assert key in text, key
    ray = tmp_path / "ray.yaml"
    ray.write_text(text.replace("\nengine: hf", "\nengine: ray"))
    assert run_cli("validate", ray).code == 0
    finetune = run_cli("init", "finetune", "--full").stdout
    assert "\ndistributed:\n" in finetune and "strategy: ddp" in finetune and "stage: 2" in finetune
    collect = run_cli("init", "rlhf", "--stage", "collect").stdout
    assert "\nengine: hf" in collect and "\ndistributed:" not in collect
    assert "\ndistributed:" in run_cli("init", "rlhf", "--stage", "dpo").stdout
