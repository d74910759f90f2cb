"""`llmtune predict`: a trained classifier, a regression run and a causal-LM run give, for the
same texts, exactly what bulk-infer writes for them (the run's template, labels and generation
length applied); texts from arguments, stdin or --input; --json one object per line; 0 lines
prints nothing; a bad MODEL or input is exit 2; nothing is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import Result, assert_bad_input, read_jsonl, write, write_jsonl
from typer.testing import CliRunner

TEXTS = ["the service was great today", "the service was awful today", "great"]
TRAINING = "{max_steps: 3, batch_size: 8, learning_rate: 1.0e-3}"
CLASSIFIER = f"""kind: finetune
task: classification
model: {{scratch: {{architecture: bert, hidden_size: 32, num_layers: 1, num_heads: 2}}}}
labels: [neg, pos]
method: {{type: full}}
data: {{train: train.jsonl, test: test.jsonl, columns: {{text: review, label: sentiment}}, max_length: 32,
        template: "Review: {{{{ text }}}}"}}
training: {TRAINING}
output: {{dir: cls}}
"""
REGRESSION = f"""kind: finetune
task: regression
label_range: [1, 5]
model: {{scratch: {{architecture: bert, hidden_size: 32, num_layers: 1, num_heads: 2}}}}
method: {{type: full}}
data: {{train: train.jsonl, test: test.jsonl, columns: {{text: review, label: stars}}, max_length: 32}}
training: {TRAINING}
output: {{dir: reg}}
"""
CAUSAL = f"""kind: finetune
task: causal_lm
model: {{scratch: {{architecture: llama, hidden_size: 32, num_layers: 1, num_heads: 2}}}}
method: {{type: lora, r: 4}}
data: {{train: sft.jsonl, test: sft.jsonl, max_length: 32}}
evaluation: {{max_new_tokens: 5}}
training: {TRAINING}
output: {{dir: lm}}
"""


def invoke(*args: str | Path, stdin: str | None = None) -> Result:
    """`llmtune ARGS` in this process (no interpreter start per call), stdin given."""
    from llmtune.cli import app

    out = CliRunner().invoke(app, [str(a) for a in args], input=stdin)
    if out.exception is not None and not isinstance(out.exception, SystemExit):
        raise out.exception
    return Result(out.exit_code, out.stdout, out.stderr)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with three finished runs: cls/ (a template), reg/ and lm/ (LoRA on a scratch llama)."""
    folder = tmp_path_factory.mktemp("predict")
    words = ["great", "lovely", "superb", "awful", "broken", "terrible"]
    rows = [
        {
            "id": i,
            "review": f"the service was {words[i % 6]} today",
            "sentiment": "pos" if i % 6 < 3 else "neg",
        }
        | {"stars": i % 5 + 1}
        for i in range(24)
    ]
    write_jsonl(folder / "train.jsonl", rows[:16])
    write_jsonl(folder / "test.jsonl", rows[16:])
    write_jsonl(
        folder / "sft.jsonl", [{"prompt": f"Echo: {w}\nAnswer:", "completion": f" {w}"} for w in words]
    )
    for name, text in (("cls", CLASSIFIER), ("reg", REGRESSION), ("lm", CAUSAL)):
        result = invoke("finetune", write(folder / f"{name}.yaml", text))
        assert result.code == 0, result.stderr[-3000:]
    return folder


def bulk_infer(folder: Path, model: Path, texts: list[str], **recipe: object) -> list[dict]:
    """bulk-infer's output rows for `texts`, in order."""
    write_jsonl(folder / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])
    spec = {
        "kind": "bulk-infer",
        "model": {"path": str(model)},
        "input": {"path": "in.jsonl", "id_column": "id"},
    }
    path = write(folder / "bulk.yaml", yaml.safe_dump({**spec, **recipe, "output": {"path": "out.jsonl"}}))
    result = invoke("bulk-infer", path)
    assert result.code == 0, result.stderr[-3000:]
    return sorted(read_jsonl(folder / "out.jsonl"), key=lambda r: r["id"])


def predicted(*args: str | Path, stdin: str | None = None) -> list[dict]:
    result = invoke("predict", *args, "--json", stdin=stdin)
    assert result.code == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
def test_a_classifier_predicts_what_bulk_infer_writes(project: Path, tmp_path: Path) -> None:
    run = project / "cls"
    before = sorted(p.name for p in project.rglob("*"))
    rows = predicted(run, *TEXTS)
    # the run's template is applied, as bulk-infer applies the recipe's
    expected = bulk_infer(
        tmp_path, run / "model", TEXTS, template="Review: {{ text }}", task="classify", labels=["neg", "pos"]
    )
    assert [r["text"] for r in rows] == TEXTS
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    for r, e in zip(rows, expected):  # the same engine; float sums may differ in the last digits
        assert r["scores"] == pytest.approx(e["scores"], abs=1e-5)
    # without the template the model sees other text: other scores (so the check above means something)
    bare = bulk_infer(tmp_path / "bare", run / "model", TEXTS, task="classify", labels=["neg", "pos"])
    assert [e["scores"] for e in bare] != [r["scores"] for r in rows]
    # plain output: the label, a tab, the probabilities; one line per text
    plain = invoke("predict", run, *TEXTS).stdout.splitlines()
    assert [line.split("\t")[0] for line in plain] == [r["label"] for r in rows]
    assert plain[0].split("\t")[1].startswith(f"{rows[0]['label']} {rows[0]['scores'][rows[0]['label']]:.3f}")
    # stdin (blank lines skipped) and --input with the run's own column names give the same rows
    assert predicted(run, stdin="\n".join(TEXTS[:2]) + "\n\n") == rows[:2]
    write_jsonl(tmp_path / "reviews.jsonl", [{"review": t} for t in TEXTS])
    assert [r["label"] for r in predicted(run, "--input", tmp_path / "reviews.jsonl")] == [
        r["label"] for r in rows
    ]
    write(tmp_path / "reviews.csv", "id,body\n7,great\n")
    assert predicted(run, "--input", tmp_path / "reviews.csv", "--column", "body") == [{**rows[2], "id": "7"}]
    assert sorted(p.name for p in project.rglob("*")) == before  # predict wrote nothing


@pytest.mark.slow
def test_regression_and_causal_lm_runs_match_bulk_infer(project: Path, tmp_path: Path) -> None:
    scores = predicted(project / "reg", *TEXTS)
    expected = bulk_infer(tmp_path / "reg", project / "reg" / "model", TEXTS, task="score")
    assert [r["score"] for r in scores] == pytest.approx([e["score"] for e in expected], abs=1e-5)
    prompts = ["Echo: great\nAnswer:", "Echo: awful\nAnswer:"]
    outputs = predicted(project / "lm", stdin="".join(p.replace("\n", " ") + "\n" for p in prompts))
    # the run's generation length (evaluation.max_new_tokens: 5), greedy
    flat = [p.replace("\n", " ") for p in prompts]
    expected = bulk_infer(tmp_path / "lm", project / "lm" / "model", flat, generation={"max_new_tokens": 5})
    assert [r["output"] for r in outputs] == [e["output"] for e in expected]
    longer = predicted(project / "lm", flat[0], "--max-new-tokens", "9")
    assert longer[0]["output"].startswith(outputs[0]["output"]) and len(longer[0]["output"]) > len(
        outputs[0]["output"]
    )


@pytest.mark.slow
def test_zero_lines_bad_models_and_bad_input(project: Path, tmp_path: Path) -> None:
    # a real empty pipe: nothing printed, exit 0
    empty = subprocess.run(
        [sys.executable, "-m", "llmtune", "predict", str(project / "cls"), "--json"],
        input="",
        capture_output=True,
        text=True,
    )
    assert (empty.returncode, empty.stdout) == (0, ""), empty.stderr[-2000:]
    assert_bad_input(invoke("predict", tmp_path / "missing", "x"), "no such run directory")
    write(tmp_path / "mine" / "notes.txt", "x\n")
    assert_bad_input(invoke("predict", tmp_path / "mine", "x"), "neither an llmtune run")
    write(tmp_path / "onnx" / "model.onnx", "")
    assert_bad_input(invoke("predict", tmp_path / "onnx", "x"), "onnx")  # runs on onnx: no config.json
    assert_bad_input(invoke("predict", "nobody/no-such-model", "x"), "not found")
    assert_bad_input(invoke("predict", project / "cls", "--input", tmp_path / "none.jsonl"), "no such file")
    write_jsonl(tmp_path / "rows.jsonl", [{"body": "x"}])
    assert_bad_input(
        invoke("predict", project / "cls", "--input", tmp_path / "rows.jsonl"), "no column 'text'"
    )
    assert_bad_input(invoke("predict", project / "cls", "--engine", "ray", "x"), "--engine")
