"""SPEC: human progress goes to stderr — bars and tables on a terminal, plain timestamped lines
elsewhere (CI, cron) — and stdout carries only the --json summary."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import start_cli, write, write_jsonl

SCRATCH = {"scratch": {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 2}}


def bulk_recipe(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"row {i} " * (1 + i % 4)} for i in range(20)])
    recipe = {
        "kind": "bulk-infer",
        "model": SCRATCH,
        "input": {"path": "in.jsonl", "id_column": "id"},
        "generation": {"max_new_tokens": 4},
        "output": {"path": "out/res.jsonl"},
    }
    return write(tmp_path / "job.yaml", yaml.safe_dump(recipe))


def run_on_terminal(*args: str | Path) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; stdout stays a pipe."""
    master, slave = pty.openpty()
    proc = start_cli(
        *args,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    stdout, _ = proc.communicate()
    os.close(master)
    return proc.returncode, stdout, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_terminal_gets_a_progress_bar_and_pipes_get_plain_lines(tmp_path: Path) -> None:
    recipe = bulk_recipe(tmp_path)
    code, stdout, terminal = run_on_terminal("bulk-infer", recipe, "--json")
    assert code == 0, terminal[-2000:]
    assert json.loads(stdout)["rows_done"] == 20  # stdout: the JSON summary and nothing else
    assert "rows/s" in terminal and "\x1b[" in terminal  # rich: styled, redrawn progress
    assert "[llmtune" not in terminal

    write(recipe, recipe.read_text().replace("out/res.jsonl", "out/again.jsonl"))
    piped = subprocess.run(
        [sys.executable, "-m", "llmtune", "bulk-infer", str(recipe), "--json"],
        capture_output=True,
        text=True,
    )
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["rows_done"] == 20
    lines = [line for line in piped.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith(("[llmtune", "bulk-infer summary", "  ")) for line in lines), lines
    assert "\x1b[" not in piped.stderr  # no escape codes in cron logs


@pytest.mark.slow
def test_finetune_on_a_terminal_keeps_stdout_for_json(tmp_path: Path) -> None:
    rows = [{"text": f"{w} day", "label": "pos" if i % 2 else "neg"} for i, w in enumerate(["a", "b"] * 12)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = {
        "kind": "finetune",
        "model": {"scratch": {"architecture": "bert", "hidden_size": 32, "num_layers": 1, "num_heads": 2}},
        "method": {"type": "full"},
        "data": {"train": "train.jsonl", "split": {"validation": 0.25}},
        "training": {"max_steps": 4, "batch_size": 4, "logging_steps": 1, "eval_steps": 2},
    }
    path = write(tmp_path / "ft.yaml", yaml.safe_dump(recipe))
    code, stdout, terminal = run_on_terminal("finetune", path, "--json")
    assert code == 0, terminal[-2000:]
    assert json.loads(stdout)["steps"] == 4  # no log dicts or bars leaked onto stdout
    assert "training" in terminal and "4/4" in terminal  # llmtune's bar reached the last step
    assert "it/s]" not in terminal and "100%|" not in terminal  # no tqdm bars from the Trainer
    # every log line arrives whole: the bar never cuts into it
    for step in (1, 2, 3, 4):
        assert f"step {step}/4 (" in terminal.replace("\r", "\n")
    assert ": loss " in terminal and "validation loss " in terminal and "run directory:" in terminal
