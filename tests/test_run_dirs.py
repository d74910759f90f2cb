"""What llmtune may write and delete, tested with real files: run directories are new, empty or
llmtune's own; only what a run writes is ever deleted; one output has one writer through any
alias; --resume needs the finished-or-not run's data; files follow the umask; `llmtune export`
never replaces a folder it did not write."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import Result, assert_bad_input, invoke, run_cli, write, write_jsonl

from llmtune.errors import BadInput, LockHeld
from llmtune.outputs import OutputLock
from llmtune.runs.rundir import LOCK_NAME, run_dir_path

WORDS = {"pos": ["great", "lovely", "superb", "fine"], "neg": ["awful", "broken", "poor", "rude"]}
SCRATCH_BERT = "{scratch: {architecture: bert, hidden_size: 32, num_layers: 2, num_heads: 2}}"


def project(folder: Path, model: str = SCRATCH_BERT, method: str = "{type: full}", extra: str = "") -> Path:
    """A recipe (tiny.yaml, run name `tiny`) and its data; train is a glob over train_*.jsonl."""
    rows = [
        {"id": i, "review": f"it was {WORDS[s][i % 4]}", "sentiment": s}
        for i, s in enumerate(["pos", "neg"] * 12)
    ]
    write_jsonl(folder / "train_a.jsonl", rows[:18])
    write_jsonl(folder / "test.jsonl", rows[18:])
    return write(
        folder / "tiny.yaml",
        f"""\
kind: finetune
task: classification
model: {model}
labels: [neg, pos]
method: {method}
data: {{train: "train_*.jsonl", test: test.jsonl, columns: {{text: review, label: sentiment}}, max_length: 16}}
training: {{max_steps: 2, batch_size: 8, learning_rate: 1.0e-3}}
{extra}""",
    )


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every file's bytes and every folder under `folder`, to show that nothing changed (but
    the content of a lock file, which names its holder)."""
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.name == LOCK_NAME:
            out[key] = "lock"
            continue
        out[key] = "link" if path.is_symlink() else "dir" if path.is_dir() else path.read_bytes()
    return out


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """The umask a child process inherits (as a cron job or a shared server sets it)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder holding a completed run in runs/tiny; tests copy it before changing it."""
    folder = tmp_path_factory.mktemp("finished")
    result = run_cli("finetune", project(folder))
    assert result.code == 0, result.stderr[-3000:]
    return folder


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "project", symlinks=True))


def finetune(folder: Path, *args: str | Path) -> Result:
    return run_cli("finetune", folder / "tiny.yaml", *args)


def set_status(run: Path, status: str) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    write(run / "manifest.json", json.dumps({**manifest, "status": status}))


# --- 1. llmtune uses, and deletes from, only run directories it made -----------------------------


def test_a_users_folder_or_file_is_never_used_as_a_run_directory(tmp_path: Path) -> None:
    project(tmp_path)
    write(tmp_path / "mydocs" / "thesis.txt", "three years of work\n")
    write(tmp_path / "mydocs" / "figures" / "fig1.csv", "x,y\n1,2\n")
    before = snapshot(tmp_path)
    for args in (
        ("--output", tmp_path / "mydocs"),  # a folder of the user's
        ("--output", tmp_path / "mydocs" / "thesis.txt"),  # a file
        ("--set", "output.dir=mydocs"),  # the same through the recipe
        ("--set", "output.dir=."),  # the recipe's own folder: recipe and data
        ("--set", "output.dir=.."),  # a folder above it
    ):
        result = finetune(tmp_path, *args, "--set", "output.overwrite=true")
        assert_bad_input(result, "not an llmtune run directory", "choose another output.dir")
        assert snapshot(tmp_path) == before, args  # not even a lock file


def test_an_existing_empty_folder_may_be_used_and_files_follow_the_umask(tmp_path: Path) -> None:
    project(tmp_path)
    (tmp_path / "empty").mkdir()
    with umask(0o027):  # neither tempfile's 0600 nor a fixed 0644
        result = finetune(tmp_path, "--output", tmp_path / "empty")
    assert result.code == 0, result.stderr[-3000:]
    run = tmp_path / "empty"
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
    modes = {str(p.relative_to(run)): stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*")}
    assert {"manifest.json", "recipe.yaml", "report.md", "model", "model/config.json"} <= set(modes)
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o750 if (run / p).is_dir() else 0o640)}
    assert not wrong, wrong


def test_a_parent_of_runs_or_a_folder_holding_what_the_job_reads_is_refused(
    finished: Path, tmp_path: Path
) -> None:
    folder = copy_of(finished, tmp_path)
    run = folder / "runs" / "tiny"
    write(run / "my_test_rows.jsonl", (folder / "test.jsonl").read_text())  # a user's file kept there
    shutil.copy(folder / "tiny.yaml", run / "again.yaml")
    before = snapshot(folder)
    overwrite = ("--set", "output.overwrite=true")
    # the folder that holds runs/tiny is no run directory itself
    assert_bad_input(finetune(folder, "--set", "output.dir=runs", *overwrite), "not an llmtune run directory")
    # a finished run that holds a data file of this run
    result = finetune(folder, "--set", f"data.test={run / 'my_test_rows.jsonl'}", *overwrite)
    assert_bad_input(result, "my_test_rows.jsonl", "which this job reads")
    # a finished run that holds the recipe (a recipe kept beside its run, output.dir: .)
    result = run_cli(
        "finetune",
        run / "again.yaml",
        *("--set", f"data.train={folder / 'train_*.jsonl'}", "--set", f"data.test={folder / 'test.jsonl'}"),
        *("--set", "output.dir=.", *overwrite),
    )
    assert_bad_input(result, "again.yaml", "which this job reads")
    assert snapshot(folder) == before


def test_starting_over_deletes_only_what_a_run_writes(finished: Path, tmp_path: Path) -> None:
    folder = copy_of(finished, tmp_path)
    run = folder / "runs" / "tiny"
    users = {"notes.txt": b"my notes\n", "mine/data.csv": b"a,b\n", "model.bak": b"keep"}
    for name, content in users.items():
        write(run / name, content.decode())
    for stale in ("old_curves.png", "results.json", "trials/000/manifest.json"):  # names runs write
        write(run / stale, "{}")
    old_manifest = json.loads((run / "manifest.json").read_text())

    result = finetune(folder, "--set", "output.overwrite=true")  # replaces a finished run
    assert result.code == 0, result.stderr[-3000:]
    assert {n: (run / n).read_bytes() for n in users} == users
    assert not (run / "old_curves.png").exists() and not (run / "results.json").exists()
    assert not (run / "trials").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["started"] >= old_manifest["started"]

    set_status(run, "failed")  # a failed run is started over without output.overwrite
    write(run / "checkpoints" / "stale.txt", "x")
    result = finetune(folder)
    assert result.code == 0, result.stderr[-3000:]
    assert {n: (run / n).read_bytes() for n in users} == users
    assert not (run / "checkpoints" / "stale.txt").exists()


# --- 5. --resume: not a finished run, and only with the data the run started with ---------------


def test_resume_refuses_a_finished_run_and_changed_data(finished: Path, tmp_path: Path) -> None:
    folder = copy_of(finished, tmp_path)  # a moved project: data paths are compared in the recipe's folder
    run = folder / "runs" / "tiny"
    before = snapshot(run)
    assert_bad_input(finetune(folder, "--resume"), "holds a finished run", "nothing to resume")
    assert snapshot(run) == before

    set_status(run, "interrupted")
    before = snapshot(run)
    train = folder / "train_a.jsonl"
    original = train.read_text()
    write(train, original + json.dumps({"id": 99, "review": "it was odd", "sentiment": "neg"}) + "\n")
    result = finetune(folder, "--resume")
    assert_bad_input(result, "train_a.jsonl changed", "start a new run (another --output)")
    write(train, original)
    write_jsonl(folder / "train_b.jsonl", [{"id": 100, "review": "it was fine", "sentiment": "pos"}])
    result = finetune(folder, "--resume")  # the glob now reads one more file
    assert_bad_input(result, "train_b.jsonl was not read", "start a new run (another --output)")
    assert snapshot(run) == before

    (folder / "train_b.jsonl").unlink()
    result = finetune(folder, "--resume")  # the same data: it resumes
    assert result.code == 0, result.stderr[-3000:]
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"


# --- 4. one output, one writer ------------------------------------------------------------------


def test_a_released_lock_file_stays_so_a_third_process_cannot_lock_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "out" / "res.jsonl.lock"
    first = OutputLock(path)
    first.acquire()
    waiting = os.open(path, os.O_RDWR)  # a second process has opened the file, not locked it yet
    try:
        first.release()
        assert path.exists()
        fcntl.flock(waiting, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the second process gets the lock
        with pytest.raises(LockHeld):  # so a third must not: same file, not a fresh one
            OutputLock(path).acquire()
    finally:
        os.close(waiting)


def test_discard_removes_only_what_this_lock_created(tmp_path: Path) -> None:
    fresh = OutputLock(tmp_path / "new" / "deeper" / "x.jsonl.lock")
    fresh.acquire()
    fresh.discard()
    assert not (tmp_path / "new").exists()
    write(tmp_path / "kept" / "x.jsonl.lock", "")
    old = OutputLock(tmp_path / "kept" / "x.jsonl.lock")
    old.acquire()
    old.discard()
    assert (tmp_path / "kept" / "x.jsonl.lock").exists()  # another run's lock file stays


def test_a_run_directory_is_locked_through_any_alias(finished: Path, tmp_path: Path) -> None:
    folder = copy_of(finished, tmp_path)
    run = folder / "runs" / "tiny"
    (tmp_path / "alias").symlink_to(run, target_is_directory=True)
    before = snapshot(run)
    for held, used in ((run, tmp_path / "alias"), (tmp_path / "alias", run)):
        lock = OutputLock(held / LOCK_NAME)
        lock.acquire()
        try:
            result = finetune(folder, "--output", used, "--set", "output.overwrite=true")
        finally:
            lock.release()
        assert result.code == 75, result.stderr[-2000:]
        assert snapshot(run) == before


def test_bulk_infer_is_locked_through_a_symlinked_output_name(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": f"row {i}"} for i in range(4)])
    recipe = {
        "kind": "bulk-infer",
        "model": {"scratch": {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 2}},
        "input": {"path": "in.jsonl", "id_column": "id"},
        "template": "Q: {{ text }}\nA:",
        "generation": {"max_new_tokens": 2},
        "output": {"path": "out/real.jsonl"},
    }
    write(tmp_path / "job.yaml", yaml.safe_dump(recipe))
    out = tmp_path / "out"
    write(out / "real.jsonl", "")
    (out / "latest.jsonl").symlink_to("real.jsonl")  # e.g. a "latest" name for cron
    (tmp_path / "outlink").symlink_to(out, target_is_directory=True)
    lock = OutputLock(out / "real.jsonl.lock")
    lock.acquire()
    try:
        for alias in (out / "latest.jsonl", tmp_path / "outlink" / "real.jsonl"):
            result = run_cli("bulk-infer", tmp_path / "job.yaml", "--output", alias)
            assert result.code == 75, (alias, result.stderr[-2000:])
    finally:
        lock.release()
    assert (out / "real.jsonl").read_text() == ""


# --- output.dir placeholders -----------------------------------------------------------------


def test_output_dir_fills_in_only_name_and_date(tmp_path: Path) -> None:
    recipe = project(tmp_path)
    for template in ("runs/{name.__class__}", "runs/{nme}", "runs/{0}", "runs/{name"):
        result = finetune(tmp_path, "--set", f"output.dir={template}", "--dry-run")
        assert_bad_input(result, "output.dir")
        assert not (tmp_path / "runs").exists()
    result = finetune(tmp_path, "--set", "output.dir=runs/{name}-{date}", "--dry-run", "--json")
    assert result.code == 0, result.stderr[-2000:]
    expected = tmp_path / "runs" / f"tiny-{dt.date.today().isoformat()}"
    assert Path(result.json()["run_dir"]).resolve() == expected.resolve()
    assert not (tmp_path / "runs").exists()

    # the runtime guarantee, whatever validation let through (a recipe changed in code)
    from llmtune.recipes import load_recipe

    loaded = load_recipe(recipe)
    for template in ("runs/{name.__class__}", "runs/{date!r}", "{}"):
        changed = loaded.model_copy(update={"output": loaded.output.model_copy(update={"dir": template})})
        with pytest.raises(BadInput, match="output.dir"):
            run_dir_path(changed)


# --- llmtune export: never over a file or a folder it did not write ----------------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished LoRA run on a scratch base (the base is saved in model/base)."""
    folder = tmp_path_factory.mktemp("lora")
    recipe = project(folder, method="{type: lora, r: 4, alpha: 8, target_modules: all-linear}")
    result = run_cli("finetune", recipe)
    assert result.code == 0, result.stderr[-3000:]
    return folder / "runs" / "tiny"


def temp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".llmtune-tmp")]


@pytest.mark.slow
def test_export_refuses_a_file_a_foreign_folder_and_the_model_itself(lora_run: Path, tmp_path: Path) -> None:
    write(tmp_path / "weights.bin", "not mine to replace")
    write(tmp_path / "mine" / "keep.txt", "keep")
    before = snapshot(tmp_path)
    for output, expected in (
        (tmp_path / "weights.bin", "is a file"),
        (tmp_path / "mine", "is not an llmtune export"),
        (lora_run / "model" / "inside", "the model being exported"),
    ):
        assert_bad_input(invoke("export", lora_run, "--output", output, "--merge"), expected)
    assert snapshot(tmp_path) == before
    assert not (lora_run / "model" / "inside").exists()


@pytest.mark.slow
def test_export_writes_new_empty_or_its_own_earlier_folder(lora_run: Path, tmp_path: Path) -> None:
    write(tmp_path / "exp.tmp" / "keep.txt", "a user's folder that happens to be named like a temp")
    out = tmp_path / "exp"
    with umask(0o027):
        first = run_cli("export", lora_run, "--output", out, "--merge")
    assert first.code == 0, first.stderr[-2000:]
    assert (tmp_path / "exp.tmp" / "keep.txt").read_text().startswith("a user's")
    assert (out / ".llmtune-export.json").exists() and not (out / "adapter_config.json").exists()
    assert "standalone model" in first.stderr
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    wrong = {str(p): oct(m) for p, m in modes.items() if m != (0o750 if p.is_dir() else 0o640)}
    assert not wrong, wrong

    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(out)  # plain transformers, no peft
    assert merged.config.id2label == {0: "neg", 1: "pos"}

    write(out / "handler.py", "a user's file, added to the export")
    again = run_cli("export", lora_run, "--output", out, "--merge")  # over its own earlier export
    assert again.code == 0, again.stderr[-2000:]
    # a re-export replaces what the export wrote, and keeps what the user added (issue 20)
    assert (out / "handler.py").read_text().startswith("a user's") and (out / "config.json").exists()
    (tmp_path / "empty").mkdir()
    assert run_cli("export", lora_run, "--output", tmp_path / "empty", "--merge").code == 0
    assert (tmp_path / "empty" / "config.json").exists()
    assert temp_leftovers(tmp_path) == []


@pytest.mark.slow
def test_export_that_fails_removes_only_its_temp_folder(lora_run: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(lora_run / "model", tmp_path / "adapter"))
    shutil.rmtree(broken / "base")
    config = json.loads((broken / "adapter_config.json").read_text())
    write(broken / "adapter_config.json", json.dumps({**config, "base_model_name_or_path": "nobody/gone"}))
    result = invoke("export", broken, "--output", tmp_path / "exp", "--merge")
    assert_bad_input(result, "cannot load the base model", "nobody/gone", "--no-merge")
    assert not (tmp_path / "exp").exists() and temp_leftovers(tmp_path) == []


@pytest.mark.slow
def test_an_adapter_that_cannot_merge_is_exported_as_an_adapter_and_said_so(
    lora_run: Path, tmp_path: Path
) -> None:
    adapter = Path(shutil.copytree(lora_run / "model", tmp_path / "prefix"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    write(adapter / "adapter_config.json", json.dumps({**config, "peft_type": "PREFIX_TUNING"}))
    assert_bad_input(
        invoke("export", adapter, "--output", tmp_path / "a", "--merge"), "PREFIX_TUNING", "cannot be merged"
    )
    result = run_cli("export", adapter, "--output", tmp_path / "b")
    assert result.code == 0, result.stderr[-2000:]
    assert (tmp_path / "b" / "adapter_config.json").exists()
    assert "is a prefix-tuning adapter, not a standalone model" in result.stderr
    assert "PeftModel.from_pretrained" in result.stderr


@pytest.mark.slow
def test_export_merges_by_default_where_peft_can(lora_run: Path, tmp_path: Path) -> None:
    result = run_cli("export", lora_run, "--output", tmp_path / "merged")
    assert result.code == 0, result.stderr[-2000:]
    assert (tmp_path / "merged" / "config.json").exists()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    kept = run_cli("export", lora_run, "--output", tmp_path / "adapter", "--no-merge")
    assert kept.code == 0 and (tmp_path / "adapter" / "adapter_config.json").exists()
    assert "is a LoRA adapter, not a standalone model" in kept.stderr


# --- an adapter names its base so that it loads on another machine ------------------------------

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.slow
def test_adapter_config_names_the_hub_id_or_the_local_folder(tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download

    lora = "{type: lora, r: 4, alpha: 8, target_modules: [query, value]}"
    hub = project(tmp_path / "hub", model=f"{{path: {MINILM}}}", method=lora)
    assert (result := run_cli("finetune", hub)).code == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "hub" / "runs" / "tiny" / "model" / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == (MINILM, "main")

    (tmp_path / "local" / "models").mkdir(parents=True)
    (tmp_path / "local" / "models" / "minilm").symlink_to(snapshot_download(MINILM, local_files_only=True))
    local = project(tmp_path / "local", model="{path: models/minilm}", method=lora)
    assert (result := run_cli("finetune", local)).code == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "local" / "runs" / "tiny" / "model" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "local").resolve() / "models" / "minilm")


def test_resume_after_an_upgrade_that_added_recipe_keys(tmp_path: Path) -> None:
    """A run interrupted under an older llmtune stored a recipe.yaml without keys added since;
    they take their defaults and do not count as a change."""
    import yaml

    from llmtune.recipes import load_recipe
    from llmtune.runs.rundir import RunDir

    path = write(
        tmp_path / "r.yaml",
        "kind: finetune\nmodel: {scratch: {architecture: bert}}\ndata: {train: t.jsonl}\noutput: {dir: run}\n",
    )
    recipe = load_recipe(path, None)
    (tmp_path / "run").mkdir()
    stored = recipe.model_dump(mode="json")
    del stored["training"]["report_to"]  # as written before report_to existed
    (tmp_path / "run" / "recipe.yaml").write_text(yaml.safe_dump(stored))
    RunDir(tmp_path / "run", recipe).check_resumable()  # no BadInput
    stored["training"]["batch_size"] = 3
    (tmp_path / "run" / "recipe.yaml").write_text(yaml.safe_dump(stored))
    with pytest.raises(BadInput, match="training.batch_size was 3"):
        RunDir(tmp_path / "run", recipe).check_resumable()
