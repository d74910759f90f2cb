"""`llmtune rlhf` stage collect: K sampled responses per prompt in candidates.jsonl, ready for
`llmtune rank`; seeded per prompt, so a rerun and an interrupted-then-resumed run write the same
bytes; bad prompts, duplicate ids and models that cannot generate are refused before anything is
written."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import assert_bad_input, invoke, read_jsonl, run_cli, start_cli, write, write_jsonl

LLAMA = {"scratch": {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 2}}
TOPICS = ["a refund", "my password", "the delivery", "an invoice", "my account", "the warranty"]


def collect_recipe(tmp_path: Path, rows: list[dict[str, Any]], **overrides: Any) -> Path:
    """A collect recipe over `rows` (prompts.jsonl) with a tiny scratch llama."""
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    recipe: dict[str, Any] = {
        "kind": "rlhf",
        "stage": "collect",
        "model": LLAMA,
        "data": {"train": "prompts.jsonl"},
        "generation": {"num_generations": 3, "max_new_tokens": 8},
        "output": {"dir": "run"},
    }
    recipe.update(overrides)
    return write(tmp_path / "collect.yaml", yaml.safe_dump(recipe))


def questions(n: int) -> list[dict[str, Any]]:
    return [{"question": f"How do I get {TOPICS[i % 6]} sorted, case {i}?"} for i in range(n)]


def test_candidates_are_ready_to_rank_and_a_rerun_writes_the_same_bytes(tmp_path: Path) -> None:
    rows = questions(6)
    rows[0]["id"], rows[1]["id"], rows[3]["id"] = "t-17", 42, "t-03"  # rows 3, 5, 6 have none
    path = collect_recipe(
        tmp_path, rows, data={"train": "prompts.jsonl", "template": "Question: {{ question }}\nAnswer:"}
    )
    result = run_cli("rlhf", path, "--json")
    assert result.code == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    candidates = read_jsonl(run / "candidates.jsonl")
    assert [c["id"] for c in candidates] == ["t-17", 42, "row-3", "t-03", "row-5", "row-6"]
    assert [c["prompt"] for c in candidates] == [f"Question: {r['question']}\nAnswer:" for r in rows]
    for c in candidates:
        assert set(c) == {"id", "prompt", "responses", "ranking"} and c["ranking"] == ""
        assert len(c["responses"]) == 3 and all(isinstance(r, str) for r in c["responses"])
    assert len({r for c in candidates for r in c["responses"]}) > 6  # sampled, not one text

    # the file is what the reward stage reads: rankings over responses, all still unranked
    from llmtune.data.preferences import preferences_of
    from llmtune.data.readers import read_file
    from llmtune.errors import BadInput

    with pytest.raises(BadInput, match=r"\(6 not ranked yet\)"):
        preferences_of(read_file(run / "candidates.jsonl", skip_bad_rows=False))

    summary = result.json()
    duplicates = sum(3 - len(set(c["responses"])) for c in candidates)
    assert summary["prompts"] == 6 and summary["responses_per_prompt"] == 3
    assert summary["duplicates"] == duplicates and summary["reused_from_journal"] == 0
    assert 0 < summary["tokens_generated"] <= 6 * 3 * 8
    assert f"llmtune rank {run / 'candidates.jsonl'}" in result.stderr
    report = (run / "report.md").read_text()
    assert "llmtune rank" in report and "| duplicates |" in report
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"

    first = (run / "candidates.jsonl").read_bytes()
    again = run_cli("rlhf", path, "--set", "output.overwrite=true")
    assert again.code == 0, again.stderr[-3000:]
    assert (run / "candidates.jsonl").read_bytes() == first
    reseeded = run_cli("rlhf", path, "--set", "output.overwrite=true", "--set", "seed=7")
    assert reseeded.code == 0, reseeded.stderr[-3000:]
    assert (run / "candidates.jsonl").read_bytes() != first


def test_identical_responses_are_counted_as_duplicates(tmp_path: Path) -> None:
    """top_k 1 leaves one token to sample: every response of a prompt is the same text."""
    rows = [{"prompt": f"Question: {t}?\nAnswer:"} for t in TOPICS[:3]]
    gen = {"num_generations": 4, "max_new_tokens": 3, "top_k": 1}
    result = run_cli("rlhf", collect_recipe(tmp_path, rows, generation=gen), "--json")
    assert result.code == 0, result.stderr[-3000:]
    candidates = read_jsonl(tmp_path / "run" / "candidates.jsonl")
    assert all(len(set(c["responses"])) == 1 and len(c["responses"]) == 4 for c in candidates)
    summary = result.json()
    assert summary["duplicates"] == 3 * 3 and summary["prompts_with_duplicates"] == 3


def test_a_resumed_run_writes_what_an_uninterrupted_run_writes(tmp_path: Path) -> None:
    """SIGTERM once the journal holds its first chunk; --resume samples only the prompts the
    journal lacks (a line stamped by another model is not reused), and candidates.jsonl is byte
    for byte the uninterrupted run's."""
    n = 120
    rows = [{"id": f"p{i:03d}", "prompt": f"Question: {TOPICS[i % 6]}, case {i}?\nAnswer:"} for i in range(n)]
    path = collect_recipe(tmp_path, rows, generation={"num_generations": 2, "max_new_tokens": 12})
    whole = run_cli("rlhf", path, "--output", tmp_path / "whole")
    assert whole.code == 0, whole.stderr[-3000:]

    run = tmp_path / "run"
    proc = start_cli(
        "rlhf",
        str(path),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # the first chunk is in the journal once its progress line is out
        if "collect: sampled" in line:
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate()
    assert proc.returncode == 143
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    assert not (run / "candidates.jsonl").exists()
    journal = read_jsonl(run / "collect_journal.jsonl")
    assert 8 <= len(journal) < n

    # a line sampled from another model is stale: it is sampled again, not reused
    journal[0]["model"] = "0000000000000000"
    write_jsonl(run / "collect_journal.jsonl", journal)

    resumed = run_cli("rlhf", path, "--resume", "--json")
    assert resumed.code == 0, resumed.stderr[-3000:]
    summary = resumed.json()
    assert summary["reused_from_journal"] == len(journal) - 1
    assert summary["generated_prompts"] == n - len(journal) + 1
    assert (run / "candidates.jsonl").read_bytes() == (tmp_path / "whole" / "candidates.jsonl").read_bytes()


@pytest.mark.parametrize(
    ("rows", "data", "fragments"),
    [
        (questions(3), {}, ["no row has a 'prompt' column", "question"]),
        (
            [
                {"id": "a", "prompt": "Q: x\nA:"},
                {"id": "b", "prompt": "Q: y\nA:"},
                {"id": "a", "prompt": "Q: z\nA:"},
            ],
            {},
            ["prompts.jsonl:3", "id 'a' is also the id of the row at", "prompts.jsonl:1"],
        ),
        (
            [{"prompt": "Q: x\nA:"}, {"prompt": 17}, {"prompt": "Q: y\nA:"}, {"prompt": 2.5}],
            {},
            ["prompts.jsonl:2", "prompts.jsonl:4", "take text prompts", "2 bad row(s)"],
        ),
        (
            [{"prompt": "Q: x\nA:"}, {"prompt": [{"role": "user", "content": "hi"}]}],
            {},
            ["prompts.jsonl:2", "chat messages"],
        ),
        (questions(3), {"template": "Q: {{ topic }}\nA:"}, ["prompts.jsonl:1", "topic"]),
    ],
    ids=["no-prompt-column", "duplicate-ids", "number-prompt", "chat-prompt", "template-field-missing"],
)
def test_bad_prompts_are_refused_and_nothing_is_written(
    tmp_path: Path, rows: list[dict[str, Any]], data: dict[str, Any], fragments: list[str]
) -> None:
    path = collect_recipe(tmp_path, rows, data={"train": "prompts.jsonl", **data})
    assert_bad_input(invoke("rlhf", path), *fragments)
    assert not (tmp_path / "run").exists()


def test_no_train_data_is_refused(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "test.jsonl", questions(2))
    path = collect_recipe(tmp_path, questions(2), data={"test": "test.jsonl"})
    assert_bad_input(invoke("rlhf", path), "data.train", "stage collect needs data.train")
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    rows = [{"prompt": f"Q: {t}\nA:"} for t in TOPICS]
    rows[1]["prompt"] = ["not", "text"]
    data = {"train": "prompts.jsonl", "limit": 4, "skip_bad_rows": True}
    result = run_cli("rlhf", collect_recipe(tmp_path, rows, data=data), "--dry-run", "--json")
    assert result.code == 0, result.stderr[-3000:]
    plan = result.json()
    assert plan["dry_run"] is True and plan["responses_per_prompt"] == 3
    assert plan["prompts"] == 3 and plan["skipped_rows"] == 1  # data.limit, then the bad row skipped
    assert "Q: a refund" in result.stderr
    assert not (tmp_path / "run").exists()


def reward_model_folder(folder: Path) -> Path:
    """A saved sequence classifier with one output (what stage reward writes), and a tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=30522,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_labels=1,
        pad_token_id=0,
    )
    LlamaForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["scratch-bert", "saved-reward-model"])
def test_a_model_that_cannot_generate_is_refused(tmp_path: Path, kind: str) -> None:
    if kind == "scratch-bert":
        model: dict[str, Any] = {"scratch": {**LLAMA["scratch"], "architecture": "bert"}}
    else:
        model = {"path": str(reward_model_folder(tmp_path / "rm"))}
    path = collect_recipe(
        tmp_path, questions(2), model=model, data={"train": "prompts.jsonl", "template": "{{ question }}"}
    )
    assert_bad_input(invoke("rlhf", path), "is not a causal language model", "model")
    assert not (tmp_path / "run").exists()
