"""Mixtures of weighted sources, replay of general rows, and retain (forgetting) measured before
and after training: what the run records, what trains, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import WORDS, assert_bad_input, invoke, write, write_jsonl

MODEL = "{scratch: {architecture: llama, hidden_size: 32, num_layers: 2, num_heads: 2}}"
TRAINING = "{max_steps: 4, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1}"


def sft_mixture(folder: Path, data: str, evaluation: str = "") -> Path:
    """A causal_lm recipe over the data block `data` (YAML flow mapping)."""
    return write(
        folder / "mix.yaml",
        f"""kind: finetune
task: causal_lm
model: {MODEL}
method: {{type: lora, r: 4}}
data: {data}
evaluation: {{max_new_tokens: 2{evaluation}}}
training: {TRAINING}
output: {{dir: run}}
""",
    )


def sums(n: int) -> list[dict]:
    return [{"q": f"{i} + 1 =", "a": f" {i + 1}"} for i in range(n)]


def echoes(n: int) -> list[dict]:
    return [
        {"word": WORDS[i % len(WORDS)], "completion": f" {WORDS[i % len(WORDS)]}", "i": i} for i in range(n)
    ]


def general(n: int) -> list[dict]:
    return [{"text": f"the {WORDS[i % 8]} saw the {WORDS[(i * 3) % 8]} number {i}"} for i in range(n)]


def two_sources(folder: Path, a_rows: int = 100, b_rows: int = 100) -> None:
    write_jsonl(folder / "sums.jsonl", sums(a_rows))
    write_jsonl(folder / "echo.jsonl", echoes(b_rows))
    write_jsonl(folder / "general.jsonl", general(40))


SOURCES = (
    "[{path: sums.jsonl, weight: 0.8, columns: {prompt: q, completion: a}}, "
    '{path: echo.jsonl, weight: 0.2, template: "Echo: {{ word }}\\nAnswer:"}]'
)


def dry_run_sources(path: Path, *sets: str) -> dict:
    args = [a for s in sets for a in ("--set", s)]
    result = invoke("finetune", path, "--dry-run", "--json", *args)
    assert result.code == 0, result.stderr[-3000:]
    return result.json()["sources"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mixture_weights_are_sampling_probabilities(tmp_path: Path, seed: int) -> None:
    # equal sizes, weights 0.8 / 0.2: the epoch's 200 rows follow the weights, not the sizes
    two_sources(tmp_path)
    path = sft_mixture(tmp_path, f"{{train: {SOURCES}, max_length: 32}}")
    sources = dry_run_sources(path, f"seed={seed}")
    n = sources["sums"]["drawn"] + sources["echo"]["drawn"]
    assert n == 200 and sources["sums"]["rows"] == sources["echo"]["rows"] == 100
    assert sources["sums"]["weight"] == 0.8
    # binomial(200, 0.8): 4 standard deviations either side (the draw is seeded: no flakiness)
    assert abs(sources["sums"]["drawn"] - 0.8 * n) <= 4 * math.sqrt(n * 0.8 * 0.2)


def test_a_small_source_with_a_large_weight_is_repeated(tmp_path: Path) -> None:
    two_sources(tmp_path, a_rows=20, b_rows=180)
    path = sft_mixture(tmp_path, f"{{train: {SOURCES}, max_length: 32}}")
    sources = dry_run_sources(path)
    drawn = sources["sums"]["drawn"]
    assert abs(drawn - 160) <= 4 * math.sqrt(200 * 0.8 * 0.2)
    assert drawn > 5 * sources["sums"]["rows"]  # each of its 20 rows several times


def built_job(path: Path, folder: Path):  # noqa: ANN201 - the SFT job after the steps run_training calls first
    from llmtune.jobs.finetune.sft import SftJob
    from llmtune.recipes import load_recipe

    job = SftJob(load_recipe(path, expected_kind="finetune"))
    job.preflight()
    job.setup(folder / "run")
    return job


def test_what_trains_is_what_the_run_records_with_each_source_s_columns_and_template(tmp_path: Path) -> None:
    two_sources(tmp_path)
    data = f"{{train: {SOURCES}, max_length: 32, replay: {{path: general.jsonl, ratio: 0.25}}}}"
    path = sft_mixture(tmp_path, data)
    recorded = dry_run_sources(path)
    job = built_job(path, tmp_path)
    train = job.splits["train"]
    prompts, completions = train.dataset["prompt"], train.dataset["completion"]
    kinds = {"sums": 0, "echo": 0, "replay": 0}
    for prompt, completion in zip(prompts, completions):
        if prompt.startswith("Echo: "):  # the echo source's own template made its prompt
            kinds["echo"] += 1
            assert prompt == f"Echo: {completion.strip()}\nAnswer:"
        elif prompt.endswith("+ 1 ="):  # the sums source's columns: prompt <- q, completion <- a
            kinds["sums"] += 1
            assert int(completion) == int(prompt.split()[0]) + 1
        else:  # replayed general text: the whole text is learnt (an empty prompt)
            kinds["replay"] += 1
            assert prompt == "" and completion.startswith("the ")
    assert kinds == {name: recorded[name]["drawn"] for name in kinds}
    # replay makes its ratio of the epoch: 200 task rows, 200 * 0.25 / 0.75 replayed
    assert kinds["replay"] == round(200 * 0.25 / 0.75)
    assert recorded["replay"]["share"] == pytest.approx(0.25, abs=0.005) and recorded["replay"]["rows"] == 40


@pytest.mark.slow
def test_mixture_replay_and_retain_end_to_end(tmp_path: Path) -> None:
    two_sources(tmp_path, a_rows=40, b_rows=40)
    write_jsonl(tmp_path / "general_test.jsonl", general(50)[40:])
    data = f"{{train: {SOURCES}, split: {{test: 0.25}}, max_length: 32, replay: {{path: general.jsonl, ratio: 0.2}}}}"
    path = sft_mixture(tmp_path, data, evaluation=", retain: general_test.jsonl")
    result = invoke("finetune", path, "--json")
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    run = tmp_path / "run"
    evaluation = json.loads((run / "eval.json").read_text())
    # per-source rows and losses: held-out rows carved from each source keep it
    for name in ("sums", "echo"):
        source = evaluation["sources"][name]
        assert source["test"] == 10 and source["measured_on"] == "test"
        assert source["metrics"]["n"] == 10 and source["metrics"]["loss"] > 0
    assert summary["sources"] == evaluation["sources"]
    assert summary["rows"] == {"train": 75, "validation": 0, "test": 20, "retain": 10}
    # retain: measured before and after; four steps at a high learning rate move it
    retain = evaluation["retain"]
    assert retain["before"]["n"] == retain["after"]["n"] == 10
    assert retain["after"]["loss"] != retain["before"]["loss"]
    assert retain["change"]["loss"] == pytest.approx(retain["after"]["loss"] - retain["before"]["loss"])
    assert summary["retain"] == retain
    report = (run / "report.md").read_text()
    assert "## Data sources" in report and "| echo |" in report and "| replay |" in report
    assert "## Retained: general data" in report
    assert f"{retain['after']['loss']:.4g}"[:4] in report
    assert "retain: general data" in result.stderr


@pytest.mark.slow
def test_classification_sources_get_their_own_template(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "reviews.jsonl", [{"review": f"{w} is fine", "label": "pos"} for w in WORDS * 3])
    write_jsonl(
        tmp_path / "tickets.jsonl",
        [{"subject": w, "body": "broken again", "label": "neg"} for w in WORDS * 3],
    )
    path = write(
        tmp_path / "cls.yaml",
        f"""kind: finetune
task: classification
model: {MODEL}
method: {{type: lora, r: 4}}
data:
  train:
    - {{path: reviews.jsonl, columns: {{text: review}}}}
    - {{path: tickets.jsonl, template: "{{{{ subject }}}}: {{{{ body }}}}"}}
  template: "review: {{{{ text }}}}"
  split: {{test: 0.25}}
  max_length: 32
evaluation: {{retain: general.jsonl}}
training: {TRAINING}
output: {{dir: run}}
""",
    )
    write_jsonl(tmp_path / "general.jsonl", [{"text": f"{w} at {w}", "label": "pos"} for w in WORDS[:6]])
    result = invoke("finetune", path, "--json")
    assert result.code == 0, result.stderr[-3000:]
    predictions = [
        json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    ]
    texts = {p["gold"]: p["text"] for p in predictions}
    # each source rendered once, by its own template (data.template for the first): never twice
    assert texts["neg"].endswith(": broken again") and not texts["neg"].startswith("review:")
    assert texts["pos"].startswith("review: ") and texts["pos"].endswith(" is fine")
    assert not texts["pos"].startswith("review: review:")
    summary = result.json()
    assert summary["rows"]["train"] == 36
    # the classifier's general rows measured before and after training, and a loss per source
    retain = json.loads((tmp_path / "run" / "eval.json").read_text())["retain"]
    assert retain["before"]["n"] == 6 and "accuracy" in retain["after"]
    assert retain["before"]["loss"] != retain["after"]["loss"]
    assert set(summary["sources"]) == {"reviews", "tickets"}
    assert all(s["metrics"]["n"] > 0 for s in summary["sources"].values())


def test_a_retain_row_outside_the_label_set_is_refused_before_training(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "train.jsonl", [{"text": w, "label": ["pos", "neg"][i % 2]} for i, w in enumerate(WORDS)]
    )
    write_jsonl(tmp_path / "general.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "sports"}])
    path = write(
        tmp_path / "cls.yaml",
        f"""kind: finetune
task: classification
model: {MODEL}
data: {{train: train.jsonl, max_length: 32}}
evaluation: {{retain: general.jsonl}}
training: {TRAINING}
output: {{dir: run}}
""",
    )
    assert_bad_input(invoke("finetune", path), "general.jsonl:2", "sports")
    assert not (tmp_path / "run").exists()


# ---- bad input: exit 2, the file (and line) named, nothing written


def test_a_missing_source_file_is_named(tmp_path: Path) -> None:
    two_sources(tmp_path)
    path = sft_mixture(
        tmp_path, "{train: [{path: sums.jsonl, columns: {prompt: q, completion: a}}, {path: nope.jsonl}]}"
    )
    assert_bad_input(invoke("finetune", path), "nope.jsonl", "data.train[1]")
    assert not (tmp_path / "run").exists()


def test_a_bad_row_in_a_source_is_named_with_its_line(tmp_path: Path) -> None:
    two_sources(tmp_path)
    text = (tmp_path / "echo.jsonl").read_text().splitlines()
    write(tmp_path / "echo.jsonl", "\n".join(text[:2] + ["{not json"] + text[2:]) + "\n")
    path = sft_mixture(tmp_path, f"{{train: {SOURCES}}}")
    assert_bad_input(invoke("finetune", path), "echo.jsonl:3")
    assert not (tmp_path / "run").exists()


def test_an_unreadable_retain_file_is_refused_before_training(tmp_path: Path) -> None:
    two_sources(tmp_path)
    write(tmp_path / "general_test.jsonl", '{"text": "fine"}\n{"text": oops}\n')
    path = sft_mixture(tmp_path, f"{{train: {SOURCES}}}", evaluation=", retain: general_test.jsonl")
    assert_bad_input(invoke("finetune", path), "general_test.jsonl:2")
    assert not (tmp_path / "run").exists()


def test_replay_without_rows_is_refused(tmp_path: Path) -> None:
    two_sources(tmp_path)
    write(tmp_path / "empty.jsonl", "")
    path = sft_mixture(tmp_path, f"{{train: {SOURCES}, replay: {{path: empty.jsonl}}}}")
    assert_bad_input(invoke("finetune", path), "empty.jsonl")
    assert not (tmp_path / "run").exists()


def test_two_sources_with_one_name_are_refused(tmp_path: Path) -> None:
    two_sources(tmp_path)
    write_jsonl(tmp_path / "more" / "sums.jsonl", sums(5))
    path = sft_mixture(tmp_path, "{train: [{path: sums.jsonl}, {path: more/sums.jsonl}]}")
    assert_bad_input(invoke("finetune", path), "named 'sums'", "name")
