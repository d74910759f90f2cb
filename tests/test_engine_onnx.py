"""`engine: onnx` writes the rows engine hf writes (labels equal, probabilities within 1e-4 in
float32), exports once into a cache keyed by the model, and keeps every bulk-infer guarantee:
fingerprints, resume, SIGTERM then a rerun that does each row once. Also what every engine
shares: labels from the model's head, a missing extra or a wrong model type is exit 2 before
anything is written, and a rerun with nothing new loads nothing (not even torch)."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SCRATCH, assert_bad_input, by_id, make_recipe, make_rows, read_jsonl, write, write_jsonl
from conftest import invoke as llmtune

pytest.importorskip("onnxruntime")

PROB_TOLERANCE = 1e-4  # float32 ONNX Runtime vs float32 torch, same weights
INT8_TOLERANCE = 0.02  # dynamic int8 weights on a tiny random model


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny classifier whose head names its labels (neg, pos), as `llmtune finetune` saves one."""
    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    folder = tmp_path_factory.mktemp("models") / "cls"
    spec = ScratchModel(architecture="bert", hidden_size=32, num_layers=2, num_heads=2)
    tokenizer = build_tokenizer(spec, [])
    build_scratch_model(spec, tokenizer, head="classification", labels=["neg", "pos"]).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMTUNE_ONNX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def head_recipe(tmp_path: Path, classifier: Path, name: str, **overrides: Any) -> Path:
    settings = {
        "model": {"path": str(classifier)},
        "task": "classify",
        "output": {"path": f"out/{name}.jsonl"},
    }
    return make_recipe(tmp_path, name=f"{name}.yaml", **{**settings, **overrides})


def test_onnx_writes_the_rows_engine_hf_writes_and_exports_once(
    tmp_path: Path, classifier: Path, onnx_cache: Path
) -> None:
    hf = llmtune("bulk-infer", head_recipe(tmp_path, classifier, "hf"), "--json")  # labels: the head's
    assert hf.code == 0, hf.stderr
    onnx_path = head_recipe(tmp_path, classifier, "onnx", engine="onnx")
    onnx = llmtune("bulk-infer", onnx_path, "--json")
    assert onnx.code == 0, onnx.stderr
    assert "exporting" in onnx.stderr and len(list(onnx_cache.iterdir())) == 1
    assert "threads" in onnx.json()  # the thread choice and its reason are in the summary
    expected, got = by_id(tmp_path / "out" / "hf.jsonl"), by_id(tmp_path / "out" / "onnx.jsonl")
    assert sorted(got) == sorted(expected) == [r["id"] for r in make_rows(30)]
    for key, row in expected.items():
        assert got[key]["label"] == row["label"]
        assert list(got[key]["scores"]) == ["neg", "pos"]
        for label, p in row["scores"].items():
            assert got[key]["scores"][label] == pytest.approx(p, abs=PROB_TOLERANCE)
        assert got[key]["model_fingerprint"] == row["model_fingerprint"]
        assert got[key]["prompt_fingerprint"] == row["prompt_fingerprint"]

    # int8: ONNX Runtime's dynamic quantisation, into the same cache folder, no second export
    int8 = llmtune(
        "bulk-infer",
        onnx_path,
        "--set",
        "model.quantization=int8",
        "--output",
        tmp_path / "out" / "int8.jsonl",
    )
    assert int8.code == 0, int8.stderr
    assert "exporting" not in int8.stderr and len(list(onnx_cache.iterdir())) == 1
    int8_rows = by_id(tmp_path / "out" / "int8.jsonl")
    for key, row in int8_rows.items():
        assert row["scores"]["pos"] == pytest.approx(expected[key]["scores"]["pos"], abs=INT8_TOLERANCE)
    # quantization: int8 on engine hf means the same ONNX Runtime int8 for a head
    hf8 = llmtune(
        "bulk-infer",
        head_recipe(tmp_path, classifier, "hf8", model={"path": str(classifier), "quantization": "int8"}),
    )
    assert hf8.code == 0 and "ONNX Runtime's dynamic int8" in hf8.stderr, hf8.stderr
    assert {k: r["scores"] for k, r in by_id(tmp_path / "out" / "hf8.jsonl").items()} == {
        k: r["scores"] for k, r in int8_rows.items()
    }

    # a cron rerun with nothing new reads the input and the journal and stops: no torch, no model
    rerun = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "llmtune", "bulk-infer", str(onnx_path), "--json"],
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in rerun.stderr.splitlines() if "|" in line}
    assert "llmtune.jobs.bulk_infer.job" in imported  # the check sees the job's imports
    assert not imported & {"torch", "transformers.modeling_utils", "onnxruntime"}
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["rows_skipped"] == 30 and summary["rows_done"] == 0


def test_choice_scores_and_likelihood_labels_match_engine_hf(tmp_path: Path) -> None:
    from llmtune.inference import registry
    from llmtune.jobs.bulk_infer.model import engine_request, model_info
    from llmtune.recipes import load_recipe

    recipe = load_recipe(make_recipe(tmp_path, task="classify", labels=["good", "bad"]), None)
    request = engine_request(recipe, model_info(recipe))
    hf, onnx = registry.open_engine("hf", request), registry.open_engine("onnx", request)
    assert onnx.supports.choices and not onnx.supports.generate and hf.supports.generate
    prompts = ["Q: good good\nA:", "Q: slow\nA: ", "Q: good good\nA:"]
    choices = [" yes", " no way", "!"]
    for a, b in zip(hf.score_choices(prompts, choices), onnx.score_choices(prompts, choices)):
        assert b.num_tokens == a.num_tokens
        assert b.logprob_sum == pytest.approx(a.logprob_sum, abs=1e-3)
    for a, b in zip(hf.classify(prompts, ["good", "bad"]), onnx.classify(prompts, ["good", "bad"])):
        assert b == pytest.approx(a, abs=PROB_TOLERANCE)
    onnx.close()


def test_labels_from_the_model_and_refusals_at_dry_run(tmp_path: Path, classifier: Path) -> None:
    wrong = head_recipe(tmp_path, classifier, "wrong", labels=["spam", "ham"])
    assert_bad_input(llmtune("bulk-infer", wrong, "--dry-run"), "not the model's labels", "neg")
    causal = make_recipe(tmp_path, name="causal.yaml", task="classify")  # a causal LM has no names
    assert_bad_input(llmtune("bulk-infer", causal, "--dry-run"), "needs labels")
    generate = make_recipe(tmp_path, name="gen.yaml", engine="onnx")
    assert_bad_input(llmtune("bulk-infer", generate, "--dry-run"), "does not generate")
    gguf = write(tmp_path / "m.gguf", "GGUF")
    as_onnx = make_recipe(tmp_path, name="g.yaml", engine="onnx", task="classify", model={"path": str(gguf)})
    assert_bad_input(llmtune("bulk-infer", as_onnx), "GGUF file", "engine: llamacpp")
    if importlib.util.find_spec("llama_cpp") is not None:  # else the missing extra is said first
        head = head_recipe(tmp_path, classifier, "head", engine="llamacpp")
        assert_bad_input(llmtune("bulk-infer", head), "runs a GGUF file")
    assert not (tmp_path / "out").exists()  # nothing written, not even the lock's folder


@pytest.mark.parametrize(
    ("engine", "module", "extra"), [("onnx", "onnxruntime", "onnx"), ("llamacpp", "llama_cpp", "llamacpp")]
)
def test_a_missing_extra_is_exit_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str, module: str, extra: str
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    recipe = make_recipe(tmp_path, engine=engine, task="classify", labels=["a", "b"])
    assert_bad_input(llmtune("bulk-infer", recipe), f"llmtune[{extra}]")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sigterm_then_a_rerun_does_every_row_once(tmp_path: Path, classifier: Path) -> None:
    from test_signals import finish, lines, start, wait_for

    slow = "{% for i in range(600) %}{% for j in range(1000) %}{% endfor %}{% endfor %}{{ text }}"
    write_jsonl(tmp_path / "in.jsonl", make_rows(40))
    recipe = head_recipe(
        tmp_path, classifier, "res", engine="onnx", template=slow, batching={"chunk_rows": 1}
    )
    out = tmp_path / "out" / "res.jsonl"
    proc, log = start(tmp_path, "bulk-infer", recipe)
    wait_for(proc, log, lambda: lines(out) >= 1, "a row in the journal")
    written = out.read_bytes()
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 143, log.read_text()[-3000:]
    assert out.read_bytes().startswith(written) and 1 <= len(by_id(out)) < 40
    rerun = llmtune("bulk-infer", recipe, "--set", "template='{{ text }}'")
    assert rerun.code == 0, rerun.stderr
    assert sorted(by_id(out)) == [r["id"] for r in make_rows(40)]
    assert len(read_jsonl(out)) == 40  # each id exactly once
    assert (tmp_path / "out" / "res.errors.jsonl").read_text() == ""


def test_scratch_recipe_exports_into_the_cache_once(tmp_path: Path, onnx_cache: Path) -> None:
    recipe = make_recipe(
        tmp_path,
        model={"scratch": {**SCRATCH["scratch"], "architecture": "bert"}},
        task="classify",
        labels=["a", "b"],
        engine="onnx",
    )
    first = llmtune("bulk-infer", recipe, "--limit", "5")
    assert first.code == 0 and "exporting" in first.stderr, first.stderr
    second = llmtune("bulk-infer", recipe)
    assert second.code == 0 and "exporting" not in second.stderr, second.stderr
    assert len(by_id(tmp_path / "out" / "res.jsonl")) == 30 and len(list(onnx_cache.iterdir())) == 1


def test_a_regression_head_scores_like_engine_hf(tmp_path: Path) -> None:
    import torch

    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    spec = ScratchModel(architecture="bert", hidden_size=32, num_layers=2, num_heads=2)
    tokenizer = build_tokenizer(spec, [])
    torch.manual_seed(0)
    model = build_scratch_model(spec, tokenizer, head="classification", labels=["score"])
    model.config.label_range = [1.0, 5.0]  # trained on 1..5 scaled to 0..1: both engines scale back
    with torch.no_grad():
        model.classifier.weight.mul_(40.0)  # spread the scores apart
    model.save_pretrained(tmp_path / "reg")
    tokenizer.save_pretrained(tmp_path / "reg")
    for engine in ("hf", "onnx"):
        recipe = make_recipe(
            tmp_path,
            name=f"{engine}.yaml",
            model={"path": "reg"},
            task="score",
            engine=engine,
            output={"path": f"out/{engine}.jsonl"},
        )
        result = llmtune("bulk-infer", recipe)
        assert result.code == 0, result.stderr
    expected, got = by_id(tmp_path / "out" / "hf.jsonl"), by_id(tmp_path / "out" / "onnx.jsonl")
    assert len({round(r["score"], 3) for r in expected.values()}) > 3  # spread: a real comparison
    for key, row in expected.items():
        assert got[key]["score"] == pytest.approx(row["score"], abs=1e-4)


def test_prompt_eval_on_onnx_predicts_what_engine_hf_predicts(tmp_path: Path, classifier: Path) -> None:
    rows = [
        {"id": str(i), "text": r["text"], "label": ("neg", "pos")[i % 2]} for i, r in enumerate(make_rows(12))
    ]
    write_jsonl(tmp_path / "test.jsonl", rows)
    for engine in ("hf", "onnx"):
        path = write(
            tmp_path / f"{engine}.yaml",
            f"kind: prompt-eval\nmodels:\n  cls: {{path: {classifier}}}\ndata: {{test: test.jsonl}}\n"
            f"prompts:\n  plain: {{template: '{{{{ text }}}}'}}\nengine: {engine}\noutput: {{dir: {engine}}}\n",
        )
        result = llmtune("prompt-eval", path)
        assert result.code == 0, result.stderr
    hf, onnx = (read_jsonl(tmp_path / e / "predictions.jsonl") for e in ("hf", "onnx"))
    assert [p["prediction"] for p in onnx] == [p["prediction"] for p in hf] and len(hf) == 12
    for a, b in zip(hf, onnx):
        assert b["scores"] == pytest.approx(a["scores"], abs=PROB_TOLERANCE)
