"""SIGTERM and SIGINT stop every job at the next row or batch, keep what is finished, release the
lock and exit 143 / 130 — with real signals sent to real `python -m llmtune` processes.

Each test waits for a marker the job writes (a journal line, the manifest's status) before it
sends the signal; nothing has a time limit (a job that ends early fails the test at once). Finetune's
SIGTERM/SIGINT are covered in tests/test_finetune_training.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import SCRATCH, by_id, make_recipe, make_rows, read_jsonl, start_cli, write, write_jsonl
from conftest import invoke as llmtune


def start(tmp_path: Path, *args: str | Path) -> tuple[subprocess.Popen, Path]:
    """`python -m llmtune ARGS` in the background; stderr goes to a file (a pipe could fill)."""
    log = tmp_path / "stderr.log"
    proc = start_cli(
        *map(str, args),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env=dict(os.environ),
    )
    return proc, log


def wait_for(proc: subprocess.Popen, log: Path, ready: Callable[[], bool], what: str) -> None:
    while not ready():
        assert proc.poll() is None, f"the job ended before {what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def finish(proc: subprocess.Popen) -> int:
    return proc.wait()


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def slow_recipe(tmp_path: Path, **overrides: object) -> Path:
    """40 rows of 200 generated tokens each, one row per chunk: minutes of work, so the signal
    always arrives mid-run."""
    write_jsonl(tmp_path / "in.jsonl", make_rows(40))
    settings = {"generation": {"max_new_tokens": 200}, "batching": {"chunk_rows": 1}, **overrides}
    return make_recipe(tmp_path, **settings)


@pytest.mark.slow
def test_sigterm_stops_bulk_infer_and_a_rerun_completes_every_row_once(tmp_path: Path) -> None:
    recipe = slow_recipe(tmp_path)
    out = tmp_path / "out" / "res.jsonl"
    proc, log = start(tmp_path, "bulk-infer", recipe)
    wait_for(proc, log, lambda: lines(out) >= 1, "a row in the journal")
    written = out.read_bytes()
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 143, log.read_text()[-3000:]
    stderr = log.read_text()
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    assert out.read_bytes().startswith(written)  # rows finished before the signal are kept
    assert 1 <= len(by_id(out)) < 40
    assert (tmp_path / "out" / "res.errors.jsonl").read_text() == ""  # no row failed "because of" it

    rerun = llmtune("bulk-infer", recipe, "--set", "generation.max_new_tokens=2", "--json")
    assert rerun.code == 0, rerun.stderr  # not 75: the lock was released
    assert sorted(by_id(out)) == [r["id"] for r in make_rows(40)]  # each id exactly once


@pytest.mark.slow
def test_sigint_during_slow_templates_is_130_not_a_failed_row(tmp_path: Path) -> None:
    # most of each row's time goes to the template, so the signal lands in the per-row error
    # handling, which once turned it into a failed row
    slow_template = "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}{{ text }}"
    recipe = slow_recipe(tmp_path, template=slow_template, generation={"max_new_tokens": 2})
    out = tmp_path / "out" / "res.jsonl"
    proc, log = start(tmp_path, "bulk-infer", recipe)
    wait_for(proc, log, lambda: lines(out) >= 1, "a row in the journal")
    proc.send_signal(signal.SIGINT)
    assert finish(proc) == 130, log.read_text()[-3000:]
    assert "interrupted by SIGINT" in log.read_text()
    assert (tmp_path / "out" / "res.errors.jsonl").read_text() == ""
    done = by_id(out)
    assert 1 <= len(done) < 40
    rerun = llmtune("bulk-infer", recipe, "--limit", "1", "--json")
    assert rerun.code == 0 and rerun.json()["rows_done"] == 1, rerun.stderr
    assert len(by_id(out)) == len(done) + 1


@pytest.mark.slow
def test_a_second_sigterm_during_the_shutdown_still_ends_cleanly(tmp_path: Path) -> None:
    recipe = slow_recipe(tmp_path)
    out = tmp_path / "out" / "res.jsonl"
    proc, log = start(tmp_path, "bulk-infer", recipe)
    wait_for(proc, log, lambda: lines(out) >= 1, "a row in the journal")
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 143, log.read_text()[-3000:]
    assert all(line.endswith(b"\n") for line in out.read_bytes().splitlines(keepends=True))
    assert len(by_id(out)) == len(read_jsonl(out))
    rerun = llmtune("bulk-infer", recipe, "--limit", "1")
    assert rerun.code == 0, rerun.stderr


@pytest.mark.slow
def test_sigterm_stops_prompt_eval_and_marks_the_run_interrupted(tmp_path: Path) -> None:
    rows = [{"id": i, "text": f"row {i} " * 5, "label": "yes" if i % 2 else "no"} for i in range(200)]
    write_jsonl(tmp_path / "test.jsonl", rows)
    recipe = {
        "kind": "prompt-eval",
        "models": {"tiny": SCRATCH},
        "data": {"test": "test.jsonl"},
        "labels": ["no", "yes"],
        "prompts": {"plain": {"template": "{{ text }}:"}},
        "scoring": "generate",
        "max_new_tokens": 200,
        "output": {"dir": "run"},
    }
    path = write(tmp_path / "eval.yaml", yaml.safe_dump(recipe))
    manifest = tmp_path / "run" / "manifest.json"

    proc, log = start(tmp_path, "prompt-eval", path)
    # the evaluation itself has begun (the run directory is open, its manifest says running)
    wait_for(proc, log, lambda: "loading tiny" in log.read_text(), "the evaluation's first model")
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 143, log.read_text()[-3000:]
    stderr = log.read_text()
    assert "interrupted by SIGTERM" in stderr and "with --resume" not in stderr
    assert json.loads(manifest.read_text())["status"] == "interrupted"
    assert not (tmp_path / "run" / "results.json").exists()
    again = llmtune("prompt-eval", path, "--dry-run")
    assert again.code == 0, again.stderr  # the run directory's lock was released
