"""`llmtune runs` / `runs show` / `runs compare` / `runs clean` and `training.keep_checkpoints`,
on a folder holding completed, failed and interrupted runs and a foreign folder (skipped, never
touched). Compare's verdicts are checked against an exact McNemar test computed here from the
runs' predictions.jsonl; clean deletes exactly what it listed and never a file a run did not write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import Result, assert_bad_input, run_cli, write, write_jsonl
from typer.testing import CliRunner

RECIPE = """kind: finetune
task: classification
model: {scratch: {architecture: bert, hidden_size: 32, num_layers: 1, num_heads: 2}}
labels: [neg, pos]
method: {type: full}
data: {train: train.jsonl, test: test.jsonl, max_length: 32}
training: {max_steps: 3, batch_size: 8, learning_rate: 1.0e-3}
"""


def invoke(*args: str | Path) -> Result:
    from llmtune.cli import app

    out = CliRunner().invoke(app, [str(a) for a in args])
    if out.exception is not None and not isinstance(out.exception, SystemExit):
        raise out.exception
    return Result(out.exit_code, out.stdout, out.stderr)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/a (default: checkpoints dropped), runs/b (keep_checkpoints: all, another learning
    rate), copies of a marked failed and interrupted, and a foreign folder."""
    folder = tmp_path_factory.mktemp("runs")
    words = ["great", "lovely", "superb", "awful", "broken", "terrible"]
    rows = [
        {"id": i, "text": f"it was {words[i % 6]}", "label": "pos" if i % 6 < 3 else "neg"} for i in range(40)
    ]
    write_jsonl(folder / "train.jsonl", rows[:16])
    write_jsonl(folder / "test.jsonl", rows[16:])
    recipe = write(folder / "r.yaml", RECIPE)
    for name, sets in (
        ("a", []),
        ("b", ["--set", "training.learning_rate=0.05", "--set", "training.keep_checkpoints=all"]),
    ):
        result = invoke("finetune", recipe, "--output", folder / "runs" / name, *sets)
        assert result.code == 0, result.stderr[-3000:]
    for name, status in (("failed", "failed"), ("stopped", "interrupted")):
        copy = Path(shutil.copytree(folder / "runs" / "b", folder / "runs" / name))
        manifest = json.loads((copy / "manifest.json").read_text())
        write(copy / "manifest.json", json.dumps({**manifest, "status": status, "name": name}))
    write(folder / "runs" / "notes" / "manifest.json", '{"mine": true}\n')  # not llmtune's
    write(folder / "runs" / "notes" / "checkpoints" / "checkpoint-1" / "model.safetensors", "keep me\n")
    return folder


@pytest.mark.slow
def test_keep_checkpoints_default_drops_them_once_model_is_saved(project: Path) -> None:
    assert not (project / "runs" / "a" / "checkpoints").exists()
    assert (project / "runs" / "a" / "model" / "config.json").exists()
    assert list((project / "runs" / "b" / "checkpoints").glob("checkpoint-*"))  # keep_checkpoints: all


@pytest.mark.slow
def test_the_table_statuses_metrics_and_the_foreign_folder(project: Path) -> None:
    before = snapshot(project)
    result = invoke("runs", project / "runs", "--json")
    assert result.code == 0, result.stderr
    records = {r["name"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(records) == {"a", "b", "failed", "stopped"}  # notes/ is not a run
    assert {n: r["status"] for n, r in records.items()} == {
        "a": "completed",
        "b": "completed",
        "failed": "failed",
        "stopped": "interrupted",
    }
    evaluation = json.loads((project / "runs" / "a" / "eval.json").read_text())["metrics"]
    a = records["a"]
    assert (a["kind"], a["stage"], a["metric"]) == ("finetune", "classification", "accuracy")
    assert (a["value"], a["ci95"]) == (evaluation["accuracy"], evaluation["accuracy_ci95"])
    assert records["b"]["size_bytes"] > records["a"]["size_bytes"]  # b kept its checkpoints
    table = invoke("runs", project / "runs").stdout  # the table a person reads
    assert "accuracy" in table and "interrupted" in table and "notes" not in table
    shown = invoke("runs", "show", project / "runs" / "a")
    assert shown.code == 0 and "plan and summary" in shown.stdout and "accuracy_ci95" in shown.stdout
    assert_bad_input(invoke("runs", "show", project / "runs" / "notes"), "not an llmtune run")
    assert snapshot(project) == before  # reading never writes


@pytest.mark.slow
def test_compare_judges_the_difference_with_an_exact_mcnemar_test(project: Path, tmp_path: Path) -> None:
    from scipy.stats import binomtest

    runs = project / "runs"
    result = invoke("runs", "compare", runs / "a", runs / "b", "--json")
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["recipe_differences"]["training.learning_rate"] == [0.001, 0.05]
    assert out["recipe_differences"]["training.keep_checkpoints"] == ["none", "all"]
    assert out["metrics"]["accuracy"][0]["ci95"] is not None
    a, b = (
        {r["id"]: r for r in map(json.loads, (runs / n / "predictions.jsonl").read_text().splitlines())}
        for n in "ab"
    )
    only_b = sum(b[i]["prediction"] == b[i]["gold"] != a[i]["prediction"] for i in a)
    only_a = sum(a[i]["prediction"] == a[i]["gold"] != b[i]["prediction"] for i in a)
    verdict = out["differences"][0]
    assert (verdict["only_this_better"], verdict["only_first_better"]) == (only_b, only_a)
    expected = binomtest(only_b, only_a + only_b).pvalue if only_a + only_b else 1.0
    assert verdict["p_value"] == pytest.approx(expected, abs=1e-6)
    assert verdict["beyond_noise"] is (expected < 0.05)
    # a run right on every test row where a is wrong: a difference beyond the noise
    better = Path(shutil.copytree(runs / "a", tmp_path / "better"))
    fixed = [{**r, "prediction": r["gold"]} for r in a.values()]
    write_jsonl(better / "predictions.jsonl", fixed)
    evaluation = json.loads((better / "eval.json").read_text())
    evaluation["metrics"]["accuracy"] = 1.0
    write(better / "eval.json", json.dumps(evaluation))
    verdict = json.loads(invoke("runs", "compare", runs / "a", better, "--json").stdout)["differences"][0]
    wrong = sum(r["prediction"] != r["gold"] for r in a.values())
    assert verdict["only_this_better"] == wrong and verdict["beyond_noise"] is (wrong >= 6)
    text = invoke("runs", "compare", runs / "a", better).stdout
    assert "McNemar" in text and "recipe" in text
    assert_bad_input(invoke("runs", "compare", runs / "a"), "at least two runs")


@pytest.mark.slow
def test_clean_lists_then_deletes_exactly_that_and_never_a_foreign_file(
    project: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(project / "runs", tmp_path / "runs"))
    checkpoint = next((folder / "b" / "checkpoints").glob("checkpoint-*"))
    write(folder / "b" / "checkpoints" / "my-notes.txt", "mine\n")  # foreign files planted
    write(checkpoint / "my-eval.txt", "mine too\n")
    resumable = snapshot(folder / "failed") | {"-": b""}
    listed = run_cli("runs", "clean", folder, "--json")
    assert listed.code == 0, listed.stderr
    plan = json.loads(listed.stdout)
    paths = {Path(d["path"]) for d in plan["delete"]}
    assert paths and all(p.is_relative_to(folder / "b" / "checkpoints") for p in paths)  # only b: completed
    assert not any(p.name in ("my-notes.txt", "my-eval.txt") for p in paths)
    assert set(plan["skipped"]) == {str(folder / "failed"), str(folder / "stopped")}  # --resume needs them
    assert all(p.exists() for p in paths)  # without --yes nothing is deleted
    deleted = json.loads(run_cli("runs", "clean", folder, "--yes", "--json").stdout)
    assert {Path(d["path"]) for d in deleted["delete"]} == paths
    assert not any(p.exists() for p in paths)
    assert (folder / "b" / "checkpoints" / "my-notes.txt").read_text() == "mine\n"
    assert (checkpoint / "my-eval.txt").read_text() == "mine too\n"
    assert not list(checkpoint.glob("*.safetensors")) and (folder / "b" / "model" / "config.json").exists()
    assert snapshot(folder / "failed") | {"-": b""} == resumable
    assert (folder / "notes" / "checkpoints" / "checkpoint-1" / "model.safetensors").exists()
    assert "nothing to clean" in run_cli("runs", "clean", folder).stderr


def test_init_and_help_show_how_to_use_a_run() -> None:
    starter = invoke("init", "finetune").stdout
    for example in (
        "llmtune runs",
        "llmtune predict runs/NAME",
        "llmtune chat runs/NAME",
        "llmtune runs clean",
    ):
        assert example in starter
    assert "keep_checkpoints: none" in invoke("init", "finetune", "--full").stdout
    for verb, example in (
        ("predict", "llmtune predict runs/"),
        ("chat", "llmtune chat runs/"),
        ("runs", "runs compare"),
    ):
        assert example in invoke(verb, "--help").stdout


def test_keep_last_keeps_the_newest_checkpoint_and_foreign_files(tmp_path: Path) -> None:
    from llmtune.runs.disk import droppable, prune_checkpoints

    run = tmp_path / "run"
    for step in (5, 10, 40):
        write(run / "checkpoints" / f"checkpoint-{step}" / "model.safetensors", "w" * step)
    write(run / "checkpoints" / "test_before.json", "{}")
    write(run / "checkpoints" / "mine.txt", "mine\n")
    assert prune_checkpoints(run, "last") == 0  # no model/ yet: the checkpoints are all there is
    write(run / "model" / "config.json", "{}")
    assert [d.path.name for d in droppable(run, "all")] == []
    assert prune_checkpoints(run, "last") == 5 + 10 + 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-40", "mine.txt"]


def test_a_running_run_whose_process_is_gone_shows_as_stopped(tmp_path: Path) -> None:
    import os

    manifest = {
        "llmtune": "0",
        "kind": "finetune",
        "name": "x",
        "status": "running",
        "started": "2026-01-01T00:00:00",
    }
    for name, pid in (("alive", os.getpid()), ("gone", 2**22 + 12345)):
        write(tmp_path / name / "manifest.json", json.dumps(manifest))
        write(tmp_path / name / ".llmtune.lock", f"pid {pid} since 2026-01-01T00:00:00")
    records = {
        r["name"]: r["status"]
        for r in map(json.loads, invoke("runs", tmp_path, "--json").stdout.splitlines())
    }
    assert records == {"alive": "running", "gone": "stopped"}
