"""`llmtune finetune RECIPE --sweep FILE` and the `sweep:` section: trials, table, best recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import assert_bad_input, invoke, recipe, write


def sweep_recipe(folder: Path) -> Path:
    path = recipe(folder, "classification", "lora")
    text = path.read_text().replace("max_length: 32}", "max_length: 32, split: {validation: 0.25}}")
    return write(path, text)


@pytest.mark.slow
def test_grid_sweep_runs_every_trial_and_saves_the_best_recipe(tmp_path: Path) -> None:
    sweep = write(
        tmp_path / "sweep.yaml",
        "strategy: grid\nmetric: loss\nparams:\n  training.learning_rate: [1.0e-5, 5.0e-2]\n  method.r: [2]\n",
    )
    result = invoke("finetune", sweep_recipe(tmp_path), "--sweep", sweep, "--json")
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    run = tmp_path / "run"
    trials = json.loads((run / "sweep.json").read_text())["trials"]
    assert [t["changes"] for t in trials] == [
        {"training.learning_rate": 1e-5, "method.r": 2},
        {"training.learning_rate": 5e-2, "method.r": 2},
    ]
    losses = [t["eval_loss"] for t in trials]
    assert summary["best"]["trial"] == losses.index(min(losses))
    assert "sweep results (validation eval_loss)" in result.stderr
    best = yaml.safe_load((run / "best.yaml").read_text())
    assert (
        best["training"]["learning_rate"]
        == trials[summary["best"]["trial"]]["changes"]["training.learning_rate"]
    )
    assert "sweep" not in best
    # one parameter varied: Optuna's evaluator gives it all the importance
    assert json.loads((run / "sweep.json").read_text())["importances"] == {"training.learning_rate": 1.0}
    assert "## Parameter importance" in (run / "report.md").read_text()
    for trial in trials:
        assert json.loads((Path(trial["run_dir"]) / "manifest.json").read_text())["status"] == "completed"


def test_random_sweep_section_plans_trials_in_a_dry_run(tmp_path: Path) -> None:
    path = sweep_recipe(tmp_path)
    section = (
        "sweep: {strategy: random, trials: 3, params: {training.learning_rate: "
        "{low: 1.0e-5, high: 1.0e-2, log: true}, method.r: {low: 2, high: 8}}}"
    )
    write(path, path.read_text() + section + "\n")
    result = invoke("finetune", path, "--dry-run", "--json")
    assert result.code == 0, result.stderr[-3000:]
    trials = result.json()["trials"]
    assert len(trials) == 3
    assert all(1e-5 <= t["training.learning_rate"] <= 1e-2 for t in trials)
    # integer bounds sample integers (a LoRA rank of 4.37 is no recipe)
    assert all(isinstance(t["method.r"], int) and 2 <= t["method.r"] <= 8 for t in trials)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("sweep", "fragments"),
    [
        ("params: {training.learnig_rate: [1, 2]}", ["sweep.yaml", "params", "learnig_rate"]),
        ("params: {method.r: [0]}", ["sweep.yaml", "method.r=0"]),
        (
            "strategy: grid\nparams: {training.learning_rate: {low: 1, high: 2}}",
            ["sweep.yaml:2", "strategy: random"],
        ),
        ("stratgy: grid\nparams: {method.r: [2]}", ["sweep.yaml:1", "did you mean 'strategy'"]),
        # a metric the task does not compute was a ValueError, exit 1 ("job failed")
        ("metric: bleu\nparams: {method.r: [2]}", ["sweep.yaml", "sweep.metric", "eval_bleu"]),
    ],
)
def test_bad_sweeps_are_refused_before_anything_runs(
    tmp_path: Path, sweep: str, fragments: list[str]
) -> None:
    result = invoke(
        "finetune", sweep_recipe(tmp_path), "--sweep", write(tmp_path / "sweep.yaml", sweep + "\n")
    )
    assert_bad_input(result, *fragments)
    assert not (tmp_path / "run").exists()
