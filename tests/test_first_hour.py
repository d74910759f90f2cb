"""A newcomer's first hour: a 60-row CSV of support tickets (billing / bug / feature-request)
taken from `llmtune init` to a classifier using only the starter's defaults. It must learn, or
say clearly why not."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
from conftest import run_cli

BILLING = [
    "I was charged twice for {x}",
    "please refund {x}",
    "my invoice for {x} is wrong",
    "why did the price of {x} go up",
    "cancel the subscription for {x} and stop billing me",
]
BUG = [
    "the app crashes when I open {x}",
    "{x} shows an error 500",
    "clicking {x} does nothing",
    "{x} freezes after the update",
    "the page for {x} will not load",
]
FEATURE = [
    "could you add dark mode to {x}",
    "it would be great if {x} had an export button",
    "please support keyboard shortcuts in {x}",
    "I wish {x} could sync with my calendar",
    "add a search box to {x} please",
]
THINGS = ["the dashboard", "my account", "the mobile app", "reports", "the team plan", "settings"]


def tickets(path: Path, n: int = 60) -> None:
    rng = random.Random(7)
    rows = []
    for i in range(n):
        label, phrases = [("billing", BILLING), ("bug", BUG), ("feature-request", FEATURE)][i % 3]
        rows.append(
            {
                "ticket_id": f"T{i:03d}",
                "body": rng.choice(phrases).format(x=rng.choice(THINGS)),
                "category": label,
            }
        )
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["ticket_id", "body", "category"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.slow
def test_sixty_tickets_from_the_starter_recipe_learn(tmp_path: Path) -> None:
    tickets(tmp_path / "tickets.csv")
    assert run_cli("init", "finetune", tmp_path / "recipe.yaml").code == 0
    # what a user edits in the starter: their file, columns and labels (no training settings)
    result = run_cli(
        "finetune",
        tmp_path / "recipe.yaml",
        "--json",
        "--set",
        "data.train=tickets.csv",
        "--set",
        "data.test=null",
        "--set",
        "data.split={validation: 0.15, test: 0.2, seed: 42}",
        "--set",
        "data.columns={id: ticket_id, text: body, label: category}",
        "--set",
        "labels=[billing, bug, feature-request]",
        "--set",
        "output.dir=run",
    )
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["planned_steps"] >= 60, summary["planned_steps"]  # auto epochs: enough steps
    accuracy = summary["test"]["accuracy"]
    assert accuracy >= 0.75, (accuracy, summary["warnings"])  # chance is 0.33
    # 12 test rows: the interval is wide, and the run says so
    assert any("95% Wilson interval" in w for w in summary["warnings"]), summary["warnings"]
    assert "run directory:" in result.stderr and "report:" in result.stderr
    predictions = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == summary["rows"]["test"] and '"id": "T' in predictions[0]
