"""Training under torchrun: a real 2-process DDP run on CPU (gloo) writes one run directory from
rank 0 and reaches the single-process result; refusals (lock held, bad input) end every rank
with rank 0's exit code without hanging; the `distributed:` section maps to TrainingArguments."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import start_cli, write, write_jsonl

WORDS = ["cat", "dog", "sun", "red", "blue", "tree", "fish", "bird"]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"


def free_port() -> int:
    """A port nobody listens on now: each launch gets its own, so parallel pytest workers never
    share a rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_recipe(folder: Path, extra: str = "") -> Path:
    """16 train rows (4 global batches of 4), validation and test: every batch splits evenly over
    2 ranks. No dropout, so the only difference between 1 and 2 processes is float summation order."""
    rows = [
        {"text": f"the {w} is {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
        for i, w in enumerate(WORDS * 4)
    ]
    write_jsonl(folder / "train.jsonl", rows[:16])
    write_jsonl(folder / "val.jsonl", rows[16:24])
    write_jsonl(folder / "test.jsonl", rows[24:])
    return write(
        folder / "ddp.yaml",
        f"""kind: finetune
model: {{scratch: {{architecture: llama, hidden_size: 32, num_layers: 2, num_heads: 2}}}}
method: {{type: lora, r: 4, dropout: 0.0}}
data: {{train: train.jsonl, validation: val.jsonl, test: test.jsonl, max_length: 32}}
training: {{max_steps: 6, batch_size: 4, eval_steps: 3, logging_steps: 1, learning_rate: 5.0e-3}}
output: {{dir: run}}
{extra}""",
    )


def torchrun(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`torchrun --nproc_per_node 2 -m llmtune ARGS`, as a user launches it. No time limit on the
    run (a busy machine is slow); a hang would show as a hung test."""
    command = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "llmtune"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True)


def ranks(*args: str | Path) -> list[subprocess.CompletedProcess[str]]:
    """Two ranks started by hand with the variables torchrun sets, so that each rank's own exit
    code can be read (torchrun itself exits 1 whenever a rank fails)."""
    port = str(free_port())
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2"}
    procs = [start_cli(*args, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate()
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


def files(run: Path) -> set[str]:
    return {p.relative_to(run).as_posix() for p in run.rglob("*")}


@pytest.mark.slow
def test_two_process_ddp_run_writes_one_run_dir_and_matches_one_process(tmp_path: Path) -> None:
    path = ddp_recipe(tmp_path)
    # the checkpoints are compared below: keep them (a completed run drops them by default)
    write(path, path.read_text().replace("5.0e-3}", "5.0e-3, keep_checkpoints: all}"))
    done = torchrun("finetune", path, "--output", tmp_path / "ddp", "--json")
    assert done.returncode == 0, done.stderr[-4000:]
    one = subprocess.run(
        [sys.executable, "-m", "llmtune", "finetune", str(path), "--output", str(tmp_path / "one")],
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-4000:]

    ddp, single = tmp_path / "ddp", tmp_path / "one"
    manifest = json.loads((ddp / "manifest.json").read_text())
    assert (manifest["world_size"], manifest["strategy"], manifest["status"]) == (2, "ddp", "completed")
    assert json.loads((single / "manifest.json").read_text())["world_size"] == 1
    # rank 0's files only: the same tree as one process, but for HF's per-rank RNG state in
    # each checkpoint (what --resume needs to restore every rank)
    per_rank = {f for f in files(ddp) if f.endswith("rng_state_1.pth")}
    assert per_rank, "no RNG state of rank 1 in the checkpoints: --resume would not restore it"
    as_one = {f.replace("rng_state_0.pth", "rng_state.pth") for f in files(ddp) - per_rank}
    assert as_one == files(single)
    assert not list(Path(tempfile.gettempdir()).glob("llmtune-rank1-*")), (
        "rank 1's scratch folder left behind"
    )
    # one summary on stdout, one console: rank 1 printed nothing
    assert len([line for line in done.stdout.splitlines() if line.startswith("{")]) == 1
    assert done.stderr.count("run directory:") == 1

    # the same rows per optimizer step (global batch 4 = 2 ranks x 2), gradients averaged by DDP:
    # losses agree up to float32 summation order (all-reduce vs one batch), far below 1e-4
    def losses(run: Path) -> list[float]:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r[k] for r in records for k in ("loss", "eval_loss") if k in r]

    assert len(losses(ddp)) == len(losses(single)) > 6
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-4)
    a, b = (json.loads((run / "eval.json").read_text())["metrics"] for run in (ddp, single))
    assert a["accuracy"] == b["accuracy"] and a["f1"] == pytest.approx(b["f1"], rel=1e-6)


@pytest.mark.slow
def test_every_rank_exits_75_when_another_job_holds_the_lock(tmp_path: Path) -> None:
    from llmtune.outputs import OutputLock

    path = ddp_recipe(tmp_path)
    run = tmp_path / "locked"
    held = OutputLock(run / ".llmtune.lock")
    held.acquire()
    try:
        out = ranks("finetune", path, "--output", run)
    finally:
        held.release()
    assert [r.returncode for r in out] == [75, 75], [r.stderr[-1500:] for r in out]
    assert "is held by" in out[0].stderr
    assert sorted(p.name for p in run.iterdir()) == [".llmtune.lock"]  # nothing else touched


@pytest.mark.slow
def test_bad_input_found_by_rank_0_ends_every_rank_with_exit_2(tmp_path: Path) -> None:
    # 4 rows per step cannot be shared by 2 ranks evenly? They can; 3 cannot: refused before
    # anything is written, on both ranks, with one clear line
    path = ddp_recipe(tmp_path)
    out = ranks("finetune", path, "--output", tmp_path / "odd", "--set", "training.batch_size=3")
    assert [r.returncode for r in out] == [2, 2], [r.stderr[-1500:] for r in out]
    assert "training.batch_size" in out[0].stderr and "multiple of 2" in out[0].stderr
    assert "error:" not in out[1].stderr  # one rank says it, not every rank
    assert not (tmp_path / "odd").exists()
    # a value the schema refuses: every rank exits 2 on its own, before any rank communicates
    out = ranks("finetune", path, "--output", tmp_path / "bad", "--set", "distributed.strategy=horovod")
    assert [r.returncode for r in out] == [2, 2]
    assert "distributed.strategy" in out[0].stderr
    assert not any("Traceback" in r.stderr for r in out)


def test_a_job_that_does_not_train_is_refused_under_a_launcher(tmp_path: Path, monkeypatch) -> None:
    from llmtune.errors import BadInput
    from llmtune.recipes import load_recipe
    from llmtune.runs.rundir import RunDir

    recipe = load_recipe(ddp_recipe(tmp_path), None, expected_kind="finetune")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(BadInput, match="runs in one process"):
        RunDir(tmp_path / "sweep", recipe).claim()
    assert not (tmp_path / "sweep").exists()


# ---- the TrainingArguments mapping (no launch needed)


def arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, world: int = 2):
    """The TrainingArguments keys for `section` on `world` ranks, and (but for deepspeed, whose
    TrainingArguments import the package) the TrainingArguments HF builds from them here, in
    this single process."""
    from llmtune.recipes import load_recipe
    from llmtune.runs.distributed import trainer_arguments, training_ranks
    from llmtune.runs.training import training_arguments

    recipe = load_recipe(ddp_recipe(tmp_path, section), None, expected_kind="finetune")
    with monkeypatch.context() as launched:
        launched.setenv("WORLD_SIZE", str(world))
        launched.setattr("llmtune.runs.distributed.join", lambda settings: None)  # no process group
        with training_ranks(recipe):
            keys = trainer_arguments(recipe.training.batch_size)
    if "deepspeed" in keys:
        return keys
    run = tmp_path / "run"
    return training_arguments(recipe.training, run, device="cpu", seed=1, has_validation=False, extra=keys)


def test_one_process_ignores_the_distributed_section(tmp_path: Path, monkeypatch) -> None:
    args = arguments(tmp_path, monkeypatch, "distributed: {strategy: fsdp}", world=1)
    assert args.per_device_train_batch_size == 4 and not args.fsdp and not args.deepspeed


def test_ddp_shares_the_global_batch(tmp_path: Path, monkeypatch) -> None:
    args = arguments(tmp_path, monkeypatch, "distributed: {strategy: ddp, find_unused_parameters: true}")
    assert args.per_device_train_batch_size == 2 and args.per_device_eval_batch_size == 2
    assert args.ddp_find_unused_parameters is True
    from llmtune.recipes.distributed import Distributed
    from llmtune.runs.distributed import strategy_arguments

    assert strategy_arguments(Distributed()) == {"ddp_find_unused_parameters": None}  # HF's own rule


def test_fsdp_maps_to_fsdp2_settings(tmp_path: Path, monkeypatch) -> None:
    from llmtune.recipes.distributed import Fsdp
    from llmtune.runs.distributed import fsdp_config

    config = fsdp_config(Fsdp())
    assert config["version"] == 2 and config["reshard_after_forward"] is True
    assert config["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"  # the model's _no_split_modules
    assert "transformer_layer_cls_to_wrap" not in config
    sized = fsdp_config(Fsdp(wrap="size", min_num_params=1000, sharding="shard_grad_op", cpu_offload=True))
    assert (sized["auto_wrap_policy"], sized["min_num_params"]) == ("SIZE_BASED_WRAP", 1000)
    assert sized["reshard_after_forward"] is False and sized["cpu_offload"] is True
    assert fsdp_config(Fsdp(version=1, sharding="hybrid_shard"))["reshard_after_forward"] == "hybrid_shard"
    section = "distributed: {strategy: fsdp, fsdp: {activation_checkpointing: true}}"
    args = arguments(tmp_path, monkeypatch, section)
    assert args.fsdp is True and args.fsdp_config["activation_checkpointing"] is True


def test_deepspeed_maps_to_a_zero_config(tmp_path: Path, monkeypatch) -> None:
    section = "distributed: {strategy: deepspeed, deepspeed: {stage: 3, offload_optimizer: true, offload_params: true}}"
    keys = arguments(tmp_path, monkeypatch, section)
    zero = keys["deepspeed"]["zero_optimization"]
    assert zero == {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                    "offload_param": {"device": "cpu", "pin_memory": True}}  # fmt: skip
    assert keys["deepspeed"]["train_micro_batch_size_per_gpu"] == "auto"  # filled from training:


def test_deepspeed_without_the_package_is_bad_input(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    from llmtune.errors import BadInput
    from llmtune.recipes import load_recipe
    from llmtune.runs.distributed import check

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    recipe = load_recipe(
        ddp_recipe(tmp_path, "distributed: {strategy: deepspeed}"), None, expected_kind="finetune"
    )
    check(recipe)  # one process: the section is ignored
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(BadInput, match="pip install deepspeed"):
        check(recipe)


@pytest.mark.parametrize(
    "section, fragment",
    [
        ("distributed: {strategy: fsdp, fsdp: {sharding: hybrid_shard}}", "needs version: 1"),
        ("distributed: {strategy: deepspeed, deepspeed: {stage: 2, offload_params: true}}", "stage: 3"),
    ],
)
def test_settings_a_strategy_cannot_honour_are_refused(tmp_path: Path, section: str, fragment: str) -> None:
    from llmtune.errors import BadInput
    from llmtune.recipes import load_recipe

    with pytest.raises(BadInput, match=fragment):
        load_recipe(ddp_recipe(tmp_path, section), None, expected_kind="finetune")


@pytest.mark.slow
def test_grad_accum_takes_the_steps_of_the_same_global_batch(tmp_path: Path) -> None:
    # batch 4 in one step vs 2 x 2 accumulated: the same optimiser steps (a classifier's loss is
    # a mean the Trainer must divide by grad_accum itself; it did not, and stepped twice as far)
    from conftest import run_cli

    path = ddp_recipe(tmp_path)
    losses = []
    for name, sets in (("one", "training.grad_accum=1"), ("acc", "training.grad_accum=2")):
        batch = "training.batch_size=4" if name == "one" else "training.batch_size=2"
        done = run_cli("finetune", path, "--output", tmp_path / name, "--set", sets, "--set", batch)
        assert done.code == 0, done.stderr[-3000:]
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses.append([r[k] for r in records for k in ("loss", "eval_loss") if k in r])
    # AdamW hides a loss scaled by a constant from the weights (only clipping sees it): the
    # training loss it reports does not hide it (twice the loss before the fix)
    assert len(losses[0]) >= 8 and len(losses[0]) == len(losses[1])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4), losses
