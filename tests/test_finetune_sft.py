"""causal_lm SFT: the three row formats, where the loss is taken, packing, and bad data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_bad_input, write, write_jsonl
from test_finetune_methods import (
    WORDS,
    invoke,
    one_thread,  # noqa: F401 - autouse fixture
    recipe,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def chat_rows() -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "repeat"},
                {"role": "user", "content": f"say {w}"},
                {"role": "assistant", "content": w},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": f"{w} {w}"},
            ]
        }
        for w in WORDS * 2
    ]


def sft_recipe(
    folder: Path, train: str, test: str | None = None, extra: str = "", training: str = ""
) -> Path:
    path = recipe(folder, "causal_lm", "lora", extra)
    text = path.read_text().replace("train: sft_train.jsonl", f"train: {train}")
    text = text.replace(", test: sft_test.jsonl", f", test: {test}" if test else "")
    if training:
        text = text.replace("max_steps: 2,", training + ",")
    return write(path, text)


def test_loss_is_taken_on_assistant_turns_only() -> None:
    from llmtune.jobs.finetune.sft import _encode_chat
    from llmtune.models.loading import build_tokenizer
    from llmtune.recipes.common import ScratchModel

    tokenizer = build_tokenizer(ScratchModel(), [])
    tokenizer.chat_template = CHAT_TEMPLATE
    messages = chat_rows()[0]["messages"]
    ids, labels = _encode_chat(messages, "row", tokenizer)
    assert len(ids) == len(labels)
    trained = tokenizer.decode([t for t in labels if t != -100])
    assert trained == "cat</s>cat cat</s>"
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False)


@pytest.mark.slow
def test_messages_rows_train_with_a_chat_template(tmp_path: Path) -> None:
    rows = chat_rows()
    write_jsonl(tmp_path / "chat.jsonl", rows[:12])
    write_jsonl(tmp_path / "chat_test.jsonl", rows[12:])
    path = sft_recipe(
        tmp_path, "chat.jsonl", "chat_test.jsonl", f"chat_template: {json.dumps(CHAT_TEMPLATE)}"
    )
    path.write_text(path.read_text().replace("max_length: 32", "max_length: 96"))
    result = invoke("finetune", path, "--json")
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["data_format"] == "messages"
    assert 0.0 <= summary["test"]["exact_match"] <= 1.0
    assert summary["test"]["examples"][0]["gold"] == WORDS[4] + " " + WORDS[4]
    saved = json.loads((tmp_path / "run" / "model" / "tokenizer_config.json").read_text())
    assert "<|assistant|>" in (
        saved.get("chat_template") or (tmp_path / "run" / "model" / "chat_template.jinja").read_text()
    )


def test_messages_without_any_chat_template_is_bad_input(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    result = invoke("finetune", sft_recipe(tmp_path, "chat.jsonl"))
    assert_bad_input(result, "chat_template", "tokenizer has none")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_prompt_completion_training_lowers_the_test_loss(tmp_path: Path) -> None:
    result = invoke(
        "finetune",
        sft_recipe(tmp_path, "sft_train.jsonl", "sft_test.jsonl", training="max_steps: 8"),
        "--json",
    )
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["data_format"] == "prompt_completion"
    assert summary["test"]["loss"] < summary["test_before"]["loss"]
    assert summary["test"]["perplexity"] == pytest.approx(2.718281828 ** summary["test"]["loss"], rel=1e-6)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "exact_match" in report and "perplexity" in report


@pytest.mark.slow
def test_text_rows_with_packing_take_fewer_steps(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "text.jsonl", [{"text": " ".join(WORDS[i % 8 :] + WORDS[: i % 8])} for i in range(24)]
    )
    path = sft_recipe(tmp_path, "text.jsonl", training="epochs: 1, packing: true")
    text = path.read_text().replace("max_length: 32", "max_length: 128")
    result = invoke("finetune", write(path, text), "--json")
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["data_format"] == "text"
    # 24 rows of ~40 tokens, batch 8: 3 steps unpacked; packed into 128-token rows, fewer
    assert summary["steps"] < 3


@pytest.mark.parametrize(
    ("rows", "fragments"),
    [
        ([{"prompt": "a", "completion": "b"}, {"prompt": "c"}], ["sft_train.jsonl:2", "no completion"]),
        ([{"question": "a"}], ["need messages, prompt + completion, or text"]),
        ([{"messages": [{"role": "user", "content": "hi"}]}], ["at least one assistant turn"]),
    ],
)
def test_bad_sft_rows_name_file_and_line(tmp_path: Path, rows: list[dict], fragments: list[str]) -> None:
    path = sft_recipe(tmp_path, "sft_train.jsonl")
    write_jsonl(tmp_path / "sft_train.jsonl", rows)
    assert_bad_input(invoke("finetune", path), *fragments)
    assert not (tmp_path / "run").exists()
