"""`engine: ray`: bulk-infer on a local 2-replica Ray Data actor pool writes the same rows,
failures and exit codes as `engine: hf`, and keeps resume exactly-once through SIGTERM and kill -9.

Ray takes seconds to start, so the in-process runs share one local Ray (a Ray already started
in the process is used as it is); the runs that get signals are real processes that start
their own, as a user's cron job does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_bad_input, by_id, make_recipe, make_rows, read_jsonl, start_cli, write_jsonl
from conftest import invoke as llmtune

RAY = {"engine": "ray", "ray": {"replicas": 2, "batch_rows": 4}}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray with 2 CPUs for the in-process runs of this module (the product's own start)."""
    from llmtune.jobs.bulk_infer.ray_pool import ray_session
    from llmtune.recipes.engines import RaySettings

    with ray_session(RaySettings(replicas=2)):
        yield


def run_both(tmp_path: Path, name: str, rows: int = 30, **overrides: Any) -> dict[str, Any]:
    """The same recipe with engine hf and engine ray; their exit codes, summaries and files."""
    out: dict[str, Any] = {}
    for engine, extra in (("hf", {}), ("ray", RAY)):
        output = {"path": f"out/{name}-{engine}.jsonl"}
        recipe = make_recipe(tmp_path, rows, f"{name}-{engine}.yaml", output=output, **overrides, **extra)
        result = llmtune("bulk-infer", recipe, "--json")
        out[engine] = (result.code, result.json(), tmp_path / output["path"])
    return out


@pytest.mark.parametrize(
    "task",
    [{"generation": {"max_new_tokens": 6}}, {"task": "classify", "labels": ["negative", "positive"]}],
    ids=["generate", "classify"],
)
@pytest.mark.slow
def test_ray_writes_the_rows_engine_hf_writes(tmp_path: Path, local_ray: None, task: dict) -> None:
    runs = run_both(tmp_path, "job", rows=30, **task)
    (hf_code, hf_summary, hf_out), (ray_code, ray_summary, ray_out) = runs["hf"], runs["ray"]
    assert (hf_code, ray_code) == (0, 0)
    assert ray_summary["rows_done"] == 30 and ray_summary["rows_failed"] == 0
    assert ray_summary["generated_tokens"] == hf_summary["generated_tokens"]
    assert_same_rows(ray_out, hf_out)
    assert sorted(by_id(ray_out)) == [r["id"] for r in make_rows(30)]


def assert_same_rows(got: Path, expected: Path) -> None:
    """The same ids once each, with the same outputs, labels and fingerprints (in any order);
    class probabilities equal up to float noise: a batch of other rows pads a row differently
    (so do two engine hf runs with other chunk sizes)."""
    got_rows, expected_rows = by_id(got), by_id(expected)
    assert sorted(got_rows) == sorted(expected_rows)
    for key, row in got_rows.items():
        want = expected_rows[key]
        assert {k: v for k, v in row.items() if k != "scores"} == {
            k: v for k, v in want.items() if k != "scores"
        }
        assert row.get("scores", {}) == pytest.approx(want.get("scores", {}), rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_failed_rows_give_the_errors_file_and_exit_3_of_engine_hf(tmp_path: Path, local_ray: None) -> None:
    rows = make_rows(12)
    for row in rows[::3]:
        row["product"] = "kettle"  # the template needs it; the other rows fail
    rows[3]["text"] = "very long " * 40
    write_jsonl(tmp_path / "in.jsonl", rows)
    runs = run_both(tmp_path, "bad", template="{{ product }}: {{ text }}", max_length=64, on_too_long="error")
    (hf_code, hf_summary, hf_out), (ray_code, ray_summary, ray_out) = runs["hf"], runs["ray"]
    assert (hf_code, ray_code) == (3, 3)
    assert ray_summary["rows_failed"] == hf_summary["rows_failed"] == 9
    assert by_id(ray_out) == by_id(hf_out) and sorted(by_id(ray_out)) == ["r000", "r006", "r009"]
    hf_errors, ray_errors = (read_jsonl(p.with_name(p.stem + ".errors.jsonl")) for p in (hf_out, ray_out))
    assert sorted(ray_errors, key=lambda e: e["id"]) == sorted(hf_errors, key=lambda e: e["id"])
    assert any("over max_length 64" in e["reason"] for e in ray_errors)


@pytest.mark.slow
def test_sigterm_then_kill_9_then_rerun_writes_every_id_once(tmp_path: Path, local_ray: None) -> None:
    rows, slow = 120, {"generation": {"max_new_tokens": 16}}
    clean = llmtune(
        "bulk-infer", make_recipe(tmp_path, rows, "hf.yaml", **slow), "--output", tmp_path / "clean.jsonl"
    )
    assert clean.code == 0, clean.stderr
    recipe = make_recipe(
        tmp_path, rows, "ray.yaml", **slow, engine="ray", ray={"replicas": 2, "batch_rows": 2}
    )
    out = tmp_path / "out" / "res.jsonl"
    temp = Path(tempfile.mkdtemp(prefix="lt-"))  # short: Ray's socket paths must stay under 108 bytes
    try:
        stopped = stop_mid_run(recipe, out, signal.SIGTERM, temp)
        assert stopped == 128 + signal.SIGTERM
        assert list(temp.iterdir()) == [], "a stopped run leaves no Ray folder behind"
        written = [json.loads(line) for line in out.read_text().splitlines()]  # whole lines only
        assert stop_mid_run(recipe, out, signal.SIGKILL, temp, after=len(written)) == -signal.SIGKILL
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert out.read_bytes().count(b"\n") < rows, "killed too late to test anything"
    rerun = llmtune("bulk-infer", recipe, "--json")
    assert rerun.code == 0, rerun.stderr
    assert rerun.json()["rows_done"] + rerun.json()["rows_skipped"] == rows
    assert by_id(out) == by_id(tmp_path / "clean.jsonl")  # by_id fails on an id written twice


def stop_mid_run(recipe: Path, out: Path, sig: int, temp: Path, after: int = 0) -> int:
    """Start `llmtune bulk-infer RECIPE` (its own local Ray), send `sig` once the journal holds 4
    rows more than `after`, and return its exit code."""
    env = {**os.environ, "TMPDIR": str(temp)}
    proc = start_cli("bulk-infer", str(recipe), stderr=subprocess.DEVNULL, env=env)
    try:
        while not (out.exists() and out.read_bytes().count(b"\n") >= after + 4):
            assert proc.poll() is None, "the run ended before the signal"
            time.sleep(0.01)
        proc.send_signal(sig)
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_engine_ray_without_ray_is_bad_input_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = make_recipe(tmp_path, **RAY)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
        for args in ([], ["--dry-run"]):
            assert_bad_input(
                llmtune("bulk-infer", recipe, *args), "engine: ray needs Ray: pip install 'llmtune[ray]'"
            )
    assert not (tmp_path / "out").exists()
    plan = llmtune("bulk-infer", recipe, "--dry-run", "--json")
    assert plan.code == 0 and plan.json()["engine"] == "ray"
