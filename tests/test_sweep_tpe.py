"""`sweep: {strategy: tpe}`: Optuna's TPE sampler, pruning, timeout, and a study in the run
directory that an interrupted sweep resumes from without running a finished trial again."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import assert_bad_input, invoke, recipe, start_cli, write

TRAINING = "max_steps: 4, eval_steps: 2, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1"


def tpe_recipe(folder: Path, sweep: str = "", training: str = TRAINING) -> Path:
    """A tiny classification fine-tune with validation rows, and `sweep` as its sweep section."""
    path = recipe(folder, "classification", "lora", training=training)
    text = path.read_text().replace("max_length: 32}", "max_length: 32, split: {validation: 0.25}}")
    return write(path, text + (f"sweep:\n{sweep}" if sweep else ""))


def trials_of(run: Path) -> list[dict]:
    return json.loads((run / "sweep.json").read_text())["trials"]


def study_states(run: Path) -> list[str]:
    """The state of each trial as Optuna stored it in the run's study."""
    import optuna

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{run / 'study.db'}")
    return [t.state.name for t in study.trials]


def files_with_mtimes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()
    }


SPACE = """  strategy: tpe
  trials: 3
  params:
    training.learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}
    method.r: {low: 2, high: 8}
"""


@pytest.mark.slow
def test_tpe_sweep_stores_its_study_and_reports_the_best_trial_and_importances(tmp_path: Path) -> None:
    result = invoke("finetune", tpe_recipe(tmp_path, SPACE), "--json")
    assert result.code == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert study_states(run) == ["COMPLETE"] * 3
    trials = trials_of(run)
    assert [t["state"] for t in trials] == ["complete"] * 3
    for t in trials:
        assert 1e-4 <= t["changes"]["training.learning_rate"] <= 1e-1
        r = t["changes"]["method.r"]
        assert isinstance(r, int) and 2 <= r <= 8  # integer bounds give integers
        assert json.loads((Path(t["run_dir"]) / "manifest.json").read_text())["status"] == "completed"
    assert sorted(Path(t["run_dir"]).name for t in trials) == ["000", "001", "002"]
    losses = [t["eval_loss"] for t in trials]
    best = result.json()["best"]
    assert best["trial"] == losses.index(min(losses))
    recipe_out = yaml.safe_load((run / "best.yaml").read_text())
    assert recipe_out["method"]["r"] == best["changes"]["method.r"]
    assert recipe_out["training"]["learning_rate"] == best["changes"]["training.learning_rate"]
    assert "sweep" not in recipe_out
    importances = json.loads((run / "sweep.json").read_text())["importances"]
    assert set(importances) == {"training.learning_rate", "method.r"}
    assert sum(importances.values()) == pytest.approx(1.0)
    report = (run / "report.md").read_text()
    assert "| trial | training.learning_rate | method.r | eval_loss | state | best |" in report
    assert "## Parameter importance" in report
    assert any(line.startswith("| method.r | ") for line in report.splitlines())


@pytest.mark.slow
def test_pruning_stops_a_clearly_bad_trial_which_is_never_the_best(tmp_path: Path) -> None:
    # seed 0 draws lr 1000, 0.001, 1000 (all three at random: startup_trials 3). A learning rate of
    # 1000 blows the validation loss up at the first evaluation; with percentile 1, a trial worse
    # than (nearly) the best finished trial at the same step is stopped there. Trial 0 cannot be
    # pruned (no trial finished before it); trial 2 repeats its values once trial 1 has finished.
    sweep = """  strategy: tpe
  trials: 3
  startup_trials: 3
  seed: 0
  pruning: {percentile: 1, min_trials: 1}
  params:
    training.learning_rate: [1.0e-3, 1.0e+3]
"""
    training = TRAINING.replace("eval_steps: 2", "eval_steps: 1")
    result = invoke("finetune", tpe_recipe(tmp_path, sweep, training), "--json")
    assert result.code == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    trials = trials_of(run)
    assert [t["changes"]["training.learning_rate"] for t in trials] == [1e3, 1e-3, 1e3]
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned"]
    assert study_states(run) == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = trials[2]
    assert pruned["steps"] < 4  # stopped before max_steps
    stored = json.loads((Path(pruned["run_dir"]) / "manifest.json").read_text())
    assert stored["status"] == "completed" and stored["summary"]["steps"] == pruned["steps"]
    assert "stopped early (the sweep pruned this trial)" in result.stderr
    assert result.json()["best"]["trial"] == 1
    report = (run / "report.md").read_text().splitlines()
    assert any(line.startswith("| 2 |") and "| pruned |" in line for line in report)


def test_tpe_dry_run_prints_the_space_and_budget_and_writes_nothing(tmp_path: Path) -> None:
    result = invoke("finetune", tpe_recipe(tmp_path, SPACE + "  timeout: 600\n"), "--dry-run", "--json")
    assert result.code == 0, result.stderr[-3000:]
    plan = result.json()
    assert plan["strategy"] == "tpe" and plan["trials"] == 3 and plan["timeout"] == 600
    assert plan["space"] == {
        "training.learning_rate": "float in [0.0001, 0.1], log scale",
        "method.r": "integer in [2, 8]",
    }
    assert "sweep search space" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_timeout_starts_no_new_trial_once_spent(tmp_path: Path) -> None:
    result = invoke("finetune", tpe_recipe(tmp_path, SPACE + "  timeout: 0.01\n"), "--json")
    assert result.code == 0, result.stderr[-3000:]
    ran = trials_of(tmp_path / "run")
    # the first trial always runs; after it, far more than 0.01 s have passed
    assert 1 <= len(ran) < 3
    assert "timeout of 0.01 s reached" in result.stderr


def sigterm_when(args: list[str], *markers: str) -> tuple[int, str]:
    """Run `llmtune ARGS`; send SIGTERM once the stderr lines have shown each marker in turn;
    the exit code and the whole stderr."""
    proc = start_cli(*args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen, waiting = [], list(markers)
    for line in proc.stderr:
        seen.append(line)
        if waiting and waiting[0] in line:
            waiting.pop(0)
            if not waiting:
                proc.send_signal(signal.SIGTERM)
                break
    out, err = proc.communicate()
    return proc.returncode, "".join(seen) + err


@pytest.mark.slow
def test_a_sweep_killed_and_resumed_runs_no_finished_trial_again(tmp_path: Path) -> None:
    path = tpe_recipe(tmp_path, training=TRAINING.replace("max_steps: 4", "max_steps: 6"))
    sweep = write(tmp_path / "sweep.yaml", SPACE)
    run = tmp_path / "run"
    # SIGTERM during the second trial's training: its first logged step is the marker
    code, stderr = sigterm_when(
        ["finetune", str(path), "--sweep", str(sweep)], "trial 1 in trials/001", "step 1/"
    )
    assert code == 143, stderr[-3000:]
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    assert study_states(run) == ["COMPLETE", "RUNNING"]
    finished = files_with_mtimes(run / "trials" / "000")
    assert "model/adapter_config.json" in finished

    # the study is this sweep's: another one is refused before anything changes
    other = write(tmp_path / "other.yaml", SPACE.replace("trials: 3", "trials: 3\n  seed: 7"))
    assert_bad_input(
        invoke("finetune", path, "--sweep", other, "--resume"), "--resume needs the sweep", "seed"
    )
    assert study_states(run) == ["COMPLETE", "RUNNING"]

    result = invoke("finetune", path, "--sweep", sweep, "--resume", "--json")
    assert result.code == 0, result.stderr[-3000:]
    assert files_with_mtimes(run / "trials" / "000") == finished  # trial 0 never ran again
    assert "trial 0 in" not in result.stderr
    assert "trial 2 in trials/001" in result.stderr and "(retry of trial 1)" in result.stderr
    assert "resuming from" in result.stderr  # the interrupted trial continued from its checkpoint
    assert "trial 3 in trials/002" in result.stderr
    assert study_states(run) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    trials = trials_of(run)
    assert [t["state"] for t in trials] == ["complete", "retried", "complete", "complete"]
    assert trials[1]["changes"] == trials[2]["changes"]  # the retry ran the interrupted values
    for folder in ("000", "001", "002"):
        assert json.loads((run / "trials" / folder / "manifest.json").read_text())["status"] == "completed"
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
    assert result.json()["best"]["state"] == "complete"


@pytest.mark.parametrize(
    ("sweep", "fragments"),
    [
        ("strategy: tpe\nn_jobs: 2\nparams: {method.r: [2, 4]}", ["sweep.yaml:2", "n_jobs"]),
        ("strategy: tpe\ntimeout: 0\nparams: {method.r: [2, 4]}", ["sweep.yaml:2", "timeout"]),
        ("strategy: tpe\npruning: {percentile: 150}\nparams: {method.r: [2]}", ["sweep.yaml", "percentile"]),
        ("strategy: tpe\npruning: {patience: 2}\nparams: {method.r: [2]}", ["sweep.yaml", "patience"]),
        (
            "strategy: grid\npruning: {min_trials: 1}\nparams: {method.r: [2]}",
            ["sweep.yaml", "strategy: tpe"],
        ),
        ("strategy: random\nstartup_trials: 2\nparams: {method.r: [2]}", ["sweep.yaml", "strategy: tpe"]),
        (
            "strategy: tpe\nparams: {method.target_modules: [[q_proj], all-linear]}",
            ["sweep.yaml", "plain values"],
        ),
        ("strategy: tpe\nparams: {method.r: {low: 8, high: 2}}", ["sweep.yaml", "low < high"]),
        ("strategy: tpe\nparams: {method.r: {low: 0, high: 4}}", ["sweep.yaml", "method.r=0"]),
    ],
)
def test_bad_tpe_settings_are_refused_before_anything_runs(
    tmp_path: Path, sweep: str, fragments: list[str]
) -> None:
    result = invoke("finetune", tpe_recipe(tmp_path), "--sweep", write(tmp_path / "sweep.yaml", sweep + "\n"))
    assert_bad_input(result, *fragments)
    assert not (tmp_path / "run").exists()
