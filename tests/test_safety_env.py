"""Every bad environment is a clear error or a clean stop: SIGHUP (a closed terminal) stops a job
like SIGTERM, sweep studies land in the run folder whatever its name, a damaged study.db is exit
2, a generation budget the model cannot hold is exit 2 at plan time, user regexes cannot spin,
Ray's leftovers are cleaned, and a cached model loads without waiting for an unreachable hub."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    SCRATCH,
    Result,
    assert_bad_input,
    by_id,
    make_recipe,
    make_rows,
    start_cli,
    write,
    write_jsonl,
)
from conftest import invoke as llmtune

SAFETY_NET_S = 900  # a hung job fails the test instead of hanging the suite


# ---------------------------------------------------------------------------- SIGHUP
@pytest.mark.slow
def test_sighup_stops_bulk_infer_cleanly_like_sigterm(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", make_rows(30))
    recipe = make_recipe(tmp_path, generation={"max_new_tokens": 200}, batching={"chunk_rows": 1})
    out = tmp_path / "out" / "res.jsonl"
    log = tmp_path / "stderr.log"
    proc = start_cli(
        "bulk-infer",
        str(recipe),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    deadline = time.monotonic() + SAFETY_NET_S
    while not (out.exists() and out.read_bytes().count(b"\n") >= 1):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=SAFETY_NET_S) == 128 + signal.SIGHUP, log.read_text()[-3000:]
    stderr = log.read_text()
    assert "interrupted by SIGHUP" in stderr and "Traceback" not in stderr
    assert 1 <= len(by_id(out)) < 30
    assert (tmp_path / "out" / "res.errors.jsonl").read_text() == ""  # no row failed "because of" it
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".llmtune-tmp")]
    rerun = llmtune("bulk-infer", recipe, "--set", "generation.max_new_tokens=2")
    assert rerun.code == 0, rerun.stderr  # not 75: the lock was released
    assert sorted(by_id(out)) == [r["id"] for r in make_rows(30)]


def test_sighup_is_held_while_a_journal_chunk_is_written(tmp_path: Path) -> None:
    from llmtune.errors import Interrupted
    from llmtune.inference.journal import Journal, signals_held

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGHUP, interrupt)
    journal = Journal(tmp_path / "j.jsonl")
    written = []
    try:
        with pytest.raises(Interrupted), signals_held():
            signal.raise_signal(signal.SIGHUP)  # waits until the chunk is written
            journal.append([{"id": 1}, {"id": 2}])
            written.append(True)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert written and list(journal.done()) == [1, 2]


@pytest.mark.slow
def test_a_full_disk_fails_the_run_and_a_rerun_writes_every_id_once(tmp_path: Path) -> None:
    import resource

    write_jsonl(tmp_path / "in.jsonl", make_rows(24))
    recipe = make_recipe(tmp_path, generation={"max_new_tokens": 4}, batching={"chunk_rows": 4})
    out = tmp_path / "out" / "res.jsonl"

    def small_disk() -> None:  # `ulimit -f 2`: no file may grow past 2 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    full = subprocess.run(
        [sys.executable, "-m", "llmtune", "bulk-infer", str(recipe)],
        capture_output=True,
        text=True,
        preexec_fn=small_disk,
    )
    assert full.returncode == 1, full.stderr[-3000:]
    assert "File too large" in full.stderr and "Traceback" not in full.stderr
    assert 0 < out.stat().st_size <= 2048
    rerun = llmtune("bulk-infer", recipe, "--json")
    assert rerun.code == 0, rerun.stderr
    assert sorted(by_id(out)) == [r["id"] for r in make_rows(24)]  # each id once, none torn


# ---------------------------------------------------------------------------- sweeps
@pytest.mark.parametrize("folder", ["a?b=1", "x%2Fy", "sp ace#frag"])
def test_the_study_goes_to_the_run_folders_study_db_whatever_its_name(tmp_path: Path, folder: str) -> None:
    import optuna

    from llmtune.jobs.finetune.sweep_tpe import _storage

    run = tmp_path / folder
    run.mkdir()
    (tmp_path / "a").mkdir()  # the sibling a URL parser would have picked for "a?b=1"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="sweep", storage=_storage(run / "study.db"))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert (run / "study.db").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["study.db"]
    assert len(optuna.load_study(study_name="sweep", storage=_storage(run / "study.db")).trials) == 1


SWEEP = """kind: finetune
task: classification
model: {scratch: {architecture: llama, hidden_size: 32, num_layers: 2, num_heads: 2}}
method: {type: lora, r: 4}
data: {train: train.jsonl, max_length: 32, split: {validation: 0.25}}
training: {max_steps: 2}
output: {dir: run}
sweep:
  strategy: tpe
  trials: 2
  params:
    training.learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}
"""


@pytest.mark.parametrize("content", [b"", b"not a database at all\n", b"SQLite format 3\x00" + b"\x07" * 200])
def test_a_damaged_study_db_with_resume_is_exit_2_naming_it(tmp_path: Path, content: bytes) -> None:
    rows = [
        {"text": f"text {i} {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
        for i in range(16)
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = write(tmp_path / "sweep.yaml", SWEEP)
    manifest = {"llmtune": "0.2.0", "kind": "finetune", "status": "interrupted", "started": "2025-01-01"}
    write(tmp_path / "run" / "manifest.json", json.dumps(manifest))
    (tmp_path / "run" / "trials" / "trial-000").mkdir(parents=True)
    (tmp_path / "run" / "study.db").write_bytes(content)
    assert_bad_input(llmtune("finetune", recipe, "--resume"), "study.db")
    assert (tmp_path / "run" / "study.db").read_bytes() == content


# ----------------------------------------------------------- generation budget vs the model
def test_max_new_tokens_beyond_the_models_positions_is_exit_2_at_plan_time(tmp_path: Path) -> None:
    small = {"scratch": {**SCRATCH["scratch"], "max_position_embeddings": 64}}
    recipe = make_recipe(tmp_path, rows=3, model=small, generation={"max_new_tokens": 64})
    assert_bad_input(llmtune("bulk-infer", recipe, "--dry-run"), "generation.max_new_tokens", "at most 64")
    assert_bad_input(llmtune("bulk-infer", recipe), "generation.max_new_tokens")
    assert not (tmp_path / "out").exists()

    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Q: hi\nA:"}])
    collect = {
        "kind": "rlhf",
        "stage": "collect",
        "model": small,
        "data": {"train": "prompts.jsonl"},
        "generation": {"num_generations": 2, "max_new_tokens": 100},
        "output": {"dir": "run"},
    }
    path = write(tmp_path / "collect.yaml", yaml.safe_dump(collect))
    assert_bad_input(llmtune("rlhf", path), "generation.max_new_tokens", "at most 64")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- regexes
def test_rule_reward_regexes_run_in_linear_time_and_unbounded_ones_are_refused(tmp_path: Path) -> None:
    from llmtune.jobs.rlhf.rules import regex_reward

    # Python's re backtracks on this for longer than any test would wait; RE2 answers at once
    score = regex_reward("(?s)(.+)+QQQ9")
    assert score(["p"], ["a" * 50_000 + "QQQ8"]) == [0.0]
    assert score(["p"], ["xx QQQ9"]) == [1.0]
    assert regex_reward("(?i)sorry", must_match=False)(["p", "p"], ["SORRY!", "ok"]) == [0.0, 1.0]

    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}])
    for pattern in (r"(a)\1", r"(?<=a)b"):
        policy = {
            "kind": "rlhf",
            "stage": "policy",
            "model": SCRATCH,
            "data": {"train": "prompts.jsonl"},
            "rewards": [{"type": "regex", "pattern": pattern}],
        }
        path = write(tmp_path / "policy.yaml", yaml.safe_dump(policy))
        result = llmtune("rlhf", path, "--dry-run")
        assert_bad_input(result, "rewards", "bounded time", "no backreferences")
        assert "re2.cc" not in result.stderr  # RE2's own log line is not shown


# ------------------------------------------------------------------------------- Ray
def test_ray_folders_a_kill_left_are_removed_and_nothing_else(tmp_path: Path) -> None:
    from llmtune.jobs.bulk_infer.ray_pool import RAY_PREFIX, sweep_stale_ray_folders

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stale = tmp_path / f"{RAY_PREFIX}{proc.pid}-abc123"
    (stale / "session_x" / "logs").mkdir(parents=True)
    live = tmp_path / f"{RAY_PREFIX}{os.getpid()}-abc123"
    live.mkdir()
    foreign = tmp_path / "llmtune-ray-notes"
    foreign.mkdir()
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "data").write_text("mine")
    linked = tmp_path / f"{RAY_PREFIX}{proc.pid}-zzz999"
    linked.symlink_to(keep, target_is_directory=True)
    assert sweep_stale_ray_folders(tmp_path) == [stale]
    assert not stale.exists() and live.is_dir() and foreign.is_dir() and linked.is_symlink()
    assert (keep / "data").read_text() == "mine"


# -------------------------------------------------------------------------- the hub
@pytest.mark.slow
def test_a_cached_model_loads_without_waiting_for_an_unreachable_hub(tmp_path: Path) -> None:
    # an adapter whose base is named by its hub id: export loads the base by that id, which
    # transformers would look up on the hub (5 retries per file) unless llmtune goes offline
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2)
    config = LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS")
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    base.config.save_pretrained(tmp_path / "adapter")  # as a run's model/ holds them
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(tmp_path / "adapter")
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == MINILM

    result = online("export", tmp_path / "adapter", "--output", tmp_path / "exported")
    assert result.code == 0, result.stderr[-3000:]
    for sign in ("Retrying", "127.0.0.1:9", "Connection refused", "Traceback"):
        assert sign not in result.stderr, result.stderr[-3000:]
    assert (tmp_path / "exported" / "config.json").exists()

    # and a model that is not cached is refused saying why, at once
    write_jsonl(tmp_path / "in.jsonl", make_rows(2))
    missing = make_recipe(tmp_path, model={"path": "nobody/no-such-model"})
    assert_bad_input(online("bulk-infer", missing), "no-such-model", "cannot be reached")


MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def online(*args: str | Path) -> Result:
    """`llmtune ARGS` as a user runs it outside `make`: HF_HUB_OFFLINE unset, and a hub endpoint
    where nothing listens (every request would fail, after retries)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    proc = subprocess.run(
        [sys.executable, "-m", "llmtune", *map(str, args)], capture_output=True, text=True, env=env
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
