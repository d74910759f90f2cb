"""causal_lm SFT: the three row formats, where the loss is taken, packing, and bad data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import WORDS, assert_bad_input, invoke, recipe, write, write_jsonl

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


# the same turns, with TRL's {% generation %} markers, and a footer after the last turn: a
# conversation's prefixes are then no prefixes of it, which only the markers can mask
MARKED_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|>{% generation %}"
    "{{ m['content'] }}</s>{% endgeneration %}{% else %}<|{{ m['role'] }}|>{{ m['content'] }}</s>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% else %}<|end|>{% endif %}"
)


def trained_batch(folder: Path, path: Path) -> list[tuple[str, str]]:
    """(whole row, tokens that carry a label) of every row of the first batch the trainer trains
    on, each decoded; built by the job's own steps, as the training run calls them."""
    from llmtune.jobs.finetune.sft import SftJob
    from llmtune.recipes import load_recipe
    from llmtune.runs.rundir import RunDir

    job = SftJob(load_recipe(path, expected_kind="finetune"))
    job.preflight()
    job.setup(folder / "run")
    trainer = job.trainer(RunDir(folder / "run", job.recipe))
    tokenizer = job.loaded.tokenizer
    batch = next(iter(trainer.get_train_dataloader()))
    rows = []
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        trained = labels != -100
        assert (labels[trained] == ids[trained]).all()  # labels are the tokens (HF shifts them)
        rows.append((tokenizer.decode(ids[mask.bool()]), tokenizer.decode(ids[trained])))
    return rows


def chat_recipe(folder: Path, template: str, rows: list[dict], training: str = "") -> Path:
    write_jsonl(folder / "chat.jsonl", rows)
    path = sft_recipe(folder, "chat.jsonl", extra=f"chat_template: {json.dumps(template)}", training=training)
    return write(path, path.read_text().replace("max_length: 32", "max_length: 96"))


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, MARKED_TEMPLATE], ids=["prefixes", "markers"])
def test_messages_rows_train_on_the_assistant_turns_only(tmp_path: Path, template: str) -> None:
    rows = chat_rows()
    batch = trained_batch(tmp_path, chat_recipe(tmp_path, template, rows))
    assert len(batch) == 8
    for whole, trained in batch:
        word = whole.split("<|user|>say ")[1].split("</s>")[0]
        rendered = f"<|system|>repeat</s><|user|>say {word}</s><|assistant|>{word}</s>"
        rendered += f"<|user|>again</s><|assistant|>{word} {word}</s>"
        assert whole == rendered + ("<|end|>" if template == MARKED_TEMPLATE else "")
        assert trained == f"{word}</s>{word} {word}</s>"


def test_prompt_completion_rows_train_on_the_completion_only(tmp_path: Path) -> None:
    batch = trained_batch(tmp_path, sft_recipe(tmp_path, "sft_train.jsonl"))
    assert len(batch) == 8
    for whole, trained in batch:
        word = whole.split("Echo: ")[1].split("\n")[0]
        assert whole == f"<s>Echo: {word}\nAnswer: {word}</s>"
        assert trained == f" {word}</s>"


def test_text_rows_train_on_every_token(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "text.jsonl", [{"text": f"the {w} sat"} for w in WORDS * 2])
    batch = trained_batch(tmp_path, sft_recipe(tmp_path, "text.jsonl"))
    assert len(batch) == 8
    for whole, trained in batch:
        assert whole.startswith("<s>the ") and whole.endswith(" sat</s>")
        assert trained == whole


def test_chat_template_that_does_not_append_turns_is_bad_input(tmp_path: Path) -> None:
    unmarked = MARKED_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    result = invoke("finetune", chat_recipe(tmp_path, unmarked, chat_rows()), "--dry-run")
    assert_bad_input(result, "chat.jsonl:1", "use a template that appends turns")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("fmt", ["prompt_completion", "messages"])
def test_rows_with_nothing_to_learn_within_max_length_are_dropped_and_counted(
    tmp_path: Path, fmt: str
) -> None:
    long = "x" * 40  # 40 byte tokens: past max_length 32 before the first trained token
    if fmt == "prompt_completion":
        rows = [{"prompt": f"{w}:", "completion": " ok"} for w in WORDS]
        rows[1]["prompt"] = rows[5]["prompt"] = long
        path = sft_recipe(tmp_path, "sft_train.jsonl")
        learned = "completion"
    else:
        rows = [
            {"messages": [{"role": "user", "content": w}, {"role": "assistant", "content": "ok"}]}
            for w in WORDS
        ]
        rows[1]["messages"][0]["content"] = rows[5]["messages"][0]["content"] = long
        path = sft_recipe(tmp_path, "sft_train.jsonl", extra=f"chat_template: {json.dumps(CHAT_TEMPLATE)}")
        learned = "assistant turn"
    write_jsonl(tmp_path / "sft_train.jsonl", rows)
    result = invoke("finetune", path, "--dry-run", "--json")
    assert result.code == 0, result.stderr[-3000:]
    assert f"train: 2 row(s) have no {learned} within data.max_length; dropped" in result.stderr
    assert result.json()["dry_run"] is True

    write_jsonl(tmp_path / "sft_train.jsonl", [rows[1], rows[5]])
    assert_bad_input(
        invoke("finetune", path), f"no train row has a {learned} within 32 tokens", "data.max_length"
    )
    assert not (tmp_path / "run").exists()


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
    first = summary["test"]["examples"][0]
    w = WORDS[4]
    # exact match completes the last assistant turn of each test conversation
    assert first["prompt"] == (
        f"<|system|>repeat</s><|user|>say {w}</s><|assistant|>{w}</s><|user|>again</s><|assistant|>"
    )
    assert first["gold"] == f"{w} {w}"
    examples = summary["test"]["examples"]
    assert len(examples) == summary["test"]["n"] == 4  # every test row is shown: recount the score
    hits = [e["prediction"].strip() == e["gold"].strip() for e in examples]
    assert summary["test"]["exact_match"] == sum(hits) / len(hits)
    saved = json.loads((tmp_path / "run" / "model" / "tokenizer_config.json").read_text())
    assert "<|assistant|>" in (
        saved.get("chat_template") or (tmp_path / "run" / "model" / "chat_template.jinja").read_text()
    )


@pytest.mark.slow
def test_exact_match_reaches_one_once_the_model_learns_the_task(tmp_path: Path) -> None:
    # the answer depends on the prompt ("?" -> yes, "!" -> no): a tiny model learns it in ~20 steps
    rows = [
        {"prompt": f"Q: {w} {'?' if i % 2 else '!'}\nA:", "completion": " yes" if i % 2 else " no"}
        for i, w in enumerate(WORDS * 3)
    ]
    write_jsonl(tmp_path / "qa_train.jsonl", rows[:16])
    write_jsonl(tmp_path / "qa_test.jsonl", rows[16:20])
    path = sft_recipe(tmp_path, "qa_train.jsonl", "qa_test.jsonl", training="max_steps: 30")
    result = invoke("finetune", write(path, path.read_text().replace("type: lora", "type: full")), "--json")
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["test_before"]["exact_match"] < 1.0
    assert summary["test"]["exact_match"] == 1.0
    examples = summary["test"]["examples"]
    assert [e["gold"] for e in examples] == [" no", " yes", " no", " yes"]
    assert [e["prediction"].strip() for e in examples] == ["no", "yes", "no", "yes"]
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["metrics"]["exact_match"] == 1.0


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
