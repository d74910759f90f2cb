"""llmtune never writes through a link it did not create, and never opens anything for writing in
a dry run: attacks with real symlinks, hard links, fifos and foreign files planted where llmtune
writes (locks, outputs, journals, errors files, temp files, run directories). Each attack must be
refused with exit 2 naming the path, and the file behind the link must keep its bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SCRATCH, assert_bad_input, make_recipe, write, write_jsonl
from conftest import invoke as llmtune

from llmtune.errors import BadInput
from llmtune.outputs import LOCK_RECORD, OutputLock, atomic_write_text, sweep_stale_temps

SECRET = b"root:x:0:0:do not touch\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file elsewhere that an attacker wants llmtune to overwrite."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------ lock files
def plant(kind: str, lock: Path, victim: Path) -> None:
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "dangling symlink":
        lock.symlink_to(victim.with_name("created-by-llmtune"))
    elif kind == "hard link":
        os.link(victim, lock)
    elif kind == "fifo":
        os.mkfifo(lock)
    elif kind == "folder":
        lock.mkdir()
    elif kind == "foreign file":
        lock.write_bytes(SECRET)


LOCK_ATTACKS = ["symlink", "dangling symlink", "hard link", "fifo", "folder", "foreign file"]


@pytest.mark.parametrize("kind", LOCK_ATTACKS)
def test_a_planted_lock_path_is_refused_and_nothing_behind_it_changes(
    tmp_path: Path, victim: Path, kind: str
) -> None:
    lock_path = tmp_path / "res.jsonl.lock"
    plant(kind, lock_path, victim)
    lock = OutputLock(lock_path)
    with pytest.raises(BadInput, match="res.jsonl.lock"):
        lock.check()
    with pytest.raises(BadInput, match="res.jsonl.lock"):
        lock.acquire()
    assert not lock.held
    assert victim.read_bytes() == SECRET
    assert not victim.with_name("created-by-llmtune").exists()


def test_a_lock_file_is_rewritten_in_place_never_truncated(tmp_path: Path) -> None:
    lock_path = tmp_path / "res.jsonl.lock"
    lock_path.write_text("pid 12 since 2025-01-01T00:00:00")  # what llmtune 0.2 wrote
    lock = OutputLock(lock_path)
    lock.acquire()
    try:
        assert lock_path.stat().st_size == LOCK_RECORD
        assert lock_path.read_text().startswith(f"pid {os.getpid()} since ")
        again = OutputLock(lock_path)
        with pytest.raises(Exception, match=f"held by pid {os.getpid()}"):
            again.acquire()
    finally:
        lock.release()
    OutputLock(lock_path).acquire()  # a lock file of llmtune's is reused


def test_a_file_guarded_by_a_lock_may_not_have_a_second_hard_link(tmp_path: Path, victim: Path) -> None:
    os.link(victim, tmp_path / "candidates.jsonl")
    with pytest.raises(BadInput, match="2 hard links"):
        OutputLock(tmp_path / "candidates.jsonl.lock").acquire()
    assert not (tmp_path / "candidates.jsonl.lock").exists()


def test_bulk_infer_refuses_a_linked_lock_in_a_dry_run_too(tmp_path: Path, victim: Path) -> None:
    recipe = make_recipe(tmp_path, rows=3)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "res.jsonl.lock").symlink_to(victim)
    for extra in (["--dry-run"], []):
        assert_bad_input(llmtune("bulk-infer", recipe, *extra), "res.jsonl.lock", "symbolic link")
    assert victim.read_bytes() == SECRET
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["res.jsonl.lock"]


# ----------------------------------------------------------- outputs, journals, errors files
WRITTEN = {
    "output (the journal)": ({}, "res.jsonl"),
    "errors file": ({}, "res.errors.jsonl"),
    "csv output's journal": ({"output": {"path": "out/res.csv"}}, "res.journal.jsonl"),
    "csv output": ({"output": {"path": "out/res.csv"}}, "res.csv"),
}


@pytest.mark.parametrize("case", list(WRITTEN))
def test_bulk_infer_never_writes_through_a_planted_link(tmp_path: Path, victim: Path, case: str) -> None:
    overrides, name = WRITTEN[case]
    recipe = make_recipe(tmp_path, rows=3, **overrides)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / name).symlink_to(victim)
    assert_bad_input(llmtune("bulk-infer", recipe), name, "symbolic link")
    assert victim.read_bytes() == SECRET
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]  # no lock, no temp file


def test_an_appended_output_with_a_second_hard_link_is_refused(tmp_path: Path, victim: Path) -> None:
    recipe = make_recipe(tmp_path, rows=3)
    (tmp_path / "out").mkdir()
    os.link(victim, tmp_path / "out" / "res.jsonl")
    assert_bad_input(llmtune("bulk-infer", recipe), "res.jsonl", "hard links")
    assert victim.read_bytes() == SECRET


# --------------------------------------------------------------------------- temp files
def test_stale_temp_files_of_dead_llmtune_processes_are_swept_and_nothing_else(
    tmp_path: Path, victim: Path
) -> None:
    from llmtune.outputs import _HOST

    folder = tmp_path / "out"
    folder.mkdir()
    stale = folder / f".res.jsonl.{_HOST}-{dead_pid()}-abc123.llmtune-tmp"
    stale.write_bytes(b"x" * 1000)
    live = folder / f".res.jsonl.{_HOST}-{os.getppid()}-abc123.llmtune-tmp"  # pytest's parent runs
    live.write_bytes(b"mine")
    other_host = folder / f".res.jsonl.otherhost-{dead_pid()}-abc123.llmtune-tmp"  # NFS: not ours to judge
    other_host.write_bytes(b"theirs")
    foreign = folder / "notes.llmtune-tmp.txt"
    foreign.write_bytes(b"user's")
    linked = folder / f".res.jsonl.{_HOST}-{dead_pid()}-zzz999.llmtune-tmp"
    linked.symlink_to(victim)  # named like ours, but a link: never followed, never removed

    atomic_write_text(folder / "res.jsonl", "{}\n")  # any write into the folder sweeps it once
    assert not stale.exists()
    assert live.exists() and other_host.exists() and foreign.exists() and linked.is_symlink()
    assert victim.read_bytes() == SECRET
    assert sweep_stale_temps(folder) == []  # once per folder and process


def test_a_temp_name_planted_in_advance_is_never_written_through(tmp_path: Path, victim: Path) -> None:
    # temp names are random and made with O_EXCL: even a guess of the old fixed name does nothing
    (tmp_path / ".report.png.tmp.png").symlink_to(victim)
    from llmtune.runs.plots import predicted_vs_true

    predicted_vs_true(tmp_path, [0.1, 0.5, 0.9], [0.2, 0.4, 0.8])
    assert victim.read_bytes() == SECRET
    assert (tmp_path / "predicted_vs_true.png").read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == [".report.png.tmp.png"]


# ---------------------------------------------------------------------- run directories
def collect_recipe(tmp_path: Path, prompts: list[str], **overrides: Any) -> Path:
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in prompts])
    recipe: dict[str, Any] = {
        "kind": "rlhf",
        "stage": "collect",
        "model": SCRATCH,
        "data": {"train": "prompts.jsonl"},
        "generation": {"num_generations": 2, "max_new_tokens": 4},
        "output": {"dir": "run"},
    }
    recipe.update(overrides)
    return write(tmp_path / "collect.yaml", yaml.safe_dump(recipe))


def earlier_run(tmp_path: Path, status: str = "failed") -> Path:
    """A run directory an earlier llmtune run left (its manifest and lock)."""
    run = tmp_path / "run"
    manifest = {"llmtune": "0.2.0", "kind": "rlhf", "status": status, "started": "2025-01-01T00:00:00"}
    write(run / "manifest.json", json.dumps(manifest))
    write(run / ".llmtune.lock", "pid 12 since 2025-01-01T00:00:00")
    return run


@pytest.mark.parametrize(
    "name", [".llmtune.lock", "metrics.jsonl", "candidates.jsonl", "collect_journal.jsonl"]
)
def test_collect_refuses_a_run_directory_with_a_planted_link(tmp_path: Path, victim: Path, name: str) -> None:
    recipe = collect_recipe(tmp_path, ["Q: hi\nA:"])
    run = earlier_run(tmp_path)
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(victim)
    for extra in (["--dry-run"], []):
        assert_bad_input(llmtune("rlhf", recipe, *extra), name, "symbolic link")
    assert victim.read_bytes() == SECRET


@pytest.mark.parametrize("verb", ["rlhf", "finetune"])
def test_a_dry_run_opens_nothing_for_writing_not_even_the_lock(tmp_path: Path, verb: str) -> None:
    from conftest import recipe as finetune_recipe

    path = (
        collect_recipe(tmp_path, ["Q: hi\nA:"])
        if verb == "rlhf"
        else finetune_recipe(tmp_path, "classification", "lora")
    )
    run = earlier_run(tmp_path)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    result = llmtune(verb, path, "--dry-run")
    assert result.code == 0, result.stderr
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()} == before
    other = tmp_path / "new"
    assert llmtune(verb, path, "--dry-run", "--output", other).code == 0
    assert not other.exists()


def test_a_folder_holding_only_a_lock_file_is_not_llmtunes(tmp_path: Path) -> None:
    recipe = collect_recipe(tmp_path, ["Q: hi\nA:"])
    write(tmp_path / "run" / ".llmtune.lock", "")
    assert_bad_input(llmtune("rlhf", recipe, "--dry-run"), "not an llmtune run directory", ".llmtune.lock")


# ------------------------------------------------------------------ people's rankings
def ranked_candidates(run: Path) -> bytes:
    rows = [
        {"id": 1, "prompt": "Q: hi\nA:", "responses": ["a", "b"], "ranking": "B > A"},
        {"id": 2, "prompt": "Q: yo\nA:", "responses": ["c", "d"], "ranking": ""},
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (run / "candidates.jsonl").write_bytes(text)
    return text


def test_collect_never_replaces_rankings_unless_told_to(tmp_path: Path) -> None:
    recipe = collect_recipe(tmp_path, ["Q: hi\nA:", "Q: yo\nA:"])
    run = earlier_run(tmp_path, status="completed")
    ranked = ranked_candidates(run)
    result = llmtune("rlhf", recipe, "--set", "output.overwrite=true")
    assert_bad_input(result, "1 ranking(s)", "--output", "output.replace_rankings")
    assert (run / "candidates.jsonl").read_bytes() == ranked
    told = llmtune(
        "rlhf", recipe, "--set", "output.overwrite=true", "--set", "output.replace_rankings=true", "--dry-run"
    )
    assert told.code == 0, told.stderr
    other_stage = collect_recipe(tmp_path, ["Q: hi\nA:"], stage="dpo")
    assert_bad_input(
        llmtune("rlhf", other_stage, "--set", "output.replace_rankings=true"), "stage collect only"
    )


def test_collect_waits_for_no_one_while_rank_holds_the_candidates(tmp_path: Path) -> None:
    recipe = collect_recipe(tmp_path, ["Q: hi\nA:", "Q: yo\nA:"])
    run = earlier_run(tmp_path, status="completed")
    (run / "candidates.jsonl").write_text("")
    rank_session = OutputLock(run / "candidates.jsonl.lock")  # what `llmtune rank` takes
    rank_session.acquire()
    try:
        result = llmtune("rlhf", recipe, "--set", "output.overwrite=true")
    finally:
        rank_session.release()
    assert result.code == 75, result.stderr
    assert "candidates.jsonl.lock" in result.stderr
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"  # untouched


def test_a_hard_linked_candidates_file_is_refused_by_rank(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    ranked = ranked_candidates(run)
    os.link(run / "candidates.jsonl", tmp_path / "backup.jsonl")
    result = llmtune("rank", run / "candidates.jsonl")
    assert result.code == 2, result.stderr
    assert "hard links" in result.stderr and "candidates.jsonl" in result.stderr
    assert (tmp_path / "backup.jsonl").read_bytes() == ranked


# ----------------------------------------------------------------------------- screens
def test_the_collect_dry_run_shows_control_sequences_instead_of_running_them(tmp_path: Path) -> None:
    attack = "Q: \x1b]0;pwned\x07\x1b[2J\x1b]52;c;ZWNobyBoaQ==\x07[bold]x[/bold]\rA) fake\nA:"
    result = llmtune("rlhf", collect_recipe(tmp_path, [attack]), "--dry-run")
    assert result.code == 0, result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr and "\r" not in result.stderr
    assert "\\x1b]0;pwned\\x07" in result.stderr and "\\x1b]52;c;" in result.stderr
    assert "\\[bold]x\\[/bold]" in result.stderr  # markup escaped: a terminal shows it as text


def test_init_never_writes_through_a_dangling_link(tmp_path: Path, victim: Path) -> None:
    target = victim.with_name("created-by-llmtune.yaml")
    (tmp_path / "recipe.yaml").symlink_to(target)
    result = llmtune("init", "finetune", tmp_path / "recipe.yaml")
    assert result.code == 2 and "not overwriting" in result.stderr
    assert not target.exists()
