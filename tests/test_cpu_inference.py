"""CPU inference settings: `model.quantization: int8` (dynamic int8 linear layers for inference)
and `model.threads` (torch's CPU threads: the recipe's number, else the environment's, else the
auto rule). Tiny scratch models; no timings: the speed is bench/bench_int8.py's business."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_bad_input, make_recipe, read_jsonl, run_cli, write, write_jsonl
from conftest import invoke as llmtune
from conftest import recipe as finetune_recipe

from llmtune.errors import BadInput
from llmtune.models import cpu
from llmtune.models.loading import load_model
from llmtune.recipes.common import ModelRef, RecipeBase

BERT = {"architecture": "bert", "hidden_size": 64, "num_layers": 2, "num_heads": 2}
TEXTS = [f"the {w} was {q}" for w in ("cat", "meal", "room", "trip", "film") for q in ("fine", "awful", "ok")]
# sentences about different things: a real encoder scores them apart (look-alikes score alike)
VARIED = [
    "I loved every minute of this film",
    "the invoice is overdue by three weeks",
    "Paris is the capital of France",
    "my cat sleeps all day on the sofa",
    "terrible service, never again",
    "quantum computers use qubits",
    "please reset my password",
    "the soup was cold and salty",
    "a goal in the last minute won the match",
    "rain is expected tomorrow afternoon",
    "ok",
    "the stock market fell sharply today",
    "thank you so much for your help!",
    "he fixed the bike with a spanner",
    "what time does the train leave?",
]


def saved_classifier(folder: Path, labels: list[str], scale: float = 40.0) -> Path:
    """A scratch bert classifier saved as a model folder, its head scaled up so that its
    probabilities spread away from 1/n (a random head barely separates the labels)."""
    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    spec = ScratchModel(**BERT)
    tokenizer = build_tokenizer(spec, [])
    torch.manual_seed(0)
    model = build_scratch_model(spec, tokenizer, head="classification", labels=labels)
    with torch.no_grad():
        model.classifier.weight.mul_(scale)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def outputs(ref: ModelRef, folder: Path, texts: list[str] = TEXTS) -> tuple[Any, torch.Tensor]:
    """The model `ref` loads (for inference, as bulk-infer and prompt-eval load it) and its
    outputs on `texts`."""
    recipe = RecipeBase(kind="x")
    recipe.attach_source(folder / "r.yaml")  # model paths are relative to the recipe
    loaded = load_model(ref, recipe, head="classification")
    batch = loaded.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        return loaded.model, loaded.model(**batch).logits


# ---------------------------------------------------------------- int8
def test_int8_quantizes_the_body_keeps_the_head_and_agrees_with_float(tmp_path: Path) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    saved_classifier(tmp_path / "cls", ["neg", "pos", "mixed"])
    _, float_logits = outputs(ModelRef(path="cls"), tmp_path)
    model, int8_logits = outputs(ModelRef(path="cls", quantization="int8"), tmp_path)
    body = [m for name, m in model.named_modules() if name.startswith("bert.encoder.layer.1.")]
    assert sum(isinstance(m, Int8Linear) for m in body) == 6  # q, k, v, attention out, up, down
    first = [m for name, m in model.named_modules() if name.startswith("bert.encoder.layer.0.")]
    assert sum(type(m) is torch.nn.Linear for m in first) == 6  # the first block stays float32
    assert type(model.classifier) is torch.nn.Linear  # and so does the head
    assert float_logits.softmax(-1).max(-1).values.min() < 0.9  # a head that hesitates on some rows
    float_probs, int8_probs = float_logits.softmax(-1), int8_logits.softmax(-1)
    assert (float_probs - int8_probs).abs().max() < 0.05
    assert (float_probs.argmax(-1) == int8_probs.argmax(-1)).float().mean() >= 0.9
    float_model = outputs(ModelRef(path="cls"), tmp_path)[0]
    assert not any(isinstance(m, Int8Linear) for m in float_model.modules())


def test_int8_one_output_head_scores_like_float(tmp_path: Path) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmtune.models.loading import resolve_model_path

    # the real pre-trained MiniLM under a new one-output (regression) head: a random scratch
    # encoder gives every row almost the same score, too flat to compare
    base = resolve_model_path(
        ModelRef(path="sentence-transformers/all-MiniLM-L6-v2"), RecipeBase(kind="x"), "m"
    )
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(tmp_path / "reg")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "reg")
    _, float_scores = outputs(ModelRef(path="reg"), tmp_path, VARIED)
    model, int8_scores = outputs(ModelRef(path="reg", quantization="int8"), tmp_path, VARIED)
    assert any(isinstance(m, Int8Linear) for m in model.modules())
    assert type(model.classifier) is torch.nn.Linear
    spread = float_scores.max() - float_scores.min()
    # a random head spreads the scores little: int8's error (it is there: the body runs
    # quantized) stays a small part of that spread and the order of the rows is kept
    # (measured: largest error 0.18 of the spread, r = 0.96)
    error = (float_scores - int8_scores).abs().max()
    assert spread > 0 and 0 < error < 0.3 * spread, (error, spread)
    pair = torch.stack([float_scores[:, 0], int8_scores[:, 0]])
    assert torch.corrcoef(pair)[0, 1] > 0.9


def test_bulk_infer_classifies_and_generates_with_int8(tmp_path: Path) -> None:
    saved_classifier(tmp_path / "cls", ["negative", "positive"])
    classify = make_recipe(
        tmp_path,
        rows=12,
        model={"path": "cls", "quantization": "int8", "device": "cpu"},
        task="classify",
        labels=["negative", "positive"],
    )
    result = run_cli("bulk-infer", classify, "--json")  # the real CLI, as a user runs it
    assert result.code == 0, result.stderr[-3000:]
    records = read_jsonl(tmp_path / "out" / "res.jsonl")
    assert len(records) == 12 and {r["label"] for r in records} <= {"negative", "positive"}
    assert all(sum(r["scores"].values()) == pytest.approx(1.0) for r in records)
    # int8 on a head is ONNX Runtime's; conftest sets OMP_NUM_THREADS=1: auto leaves that choice alone
    assert (
        "ONNX Runtime's dynamic int8" in result.stderr and "1 (OMP_NUM_THREADS)" in result.json()["threads"]
    )

    llama = {"scratch": {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 2}}
    generate = make_recipe(tmp_path, name="gen.yaml", model={**llama, "quantization": "int8"})
    result = llmtune("bulk-infer", generate, "--output", tmp_path / "out" / "gen.jsonl")
    assert result.code == 0, result.stderr
    assert len(read_jsonl(tmp_path / "out" / "gen.jsonl")) == 12


def test_prompt_eval_scores_with_an_int8_classifier(tmp_path: Path) -> None:
    saved_classifier(tmp_path / "cls", ["negative", "positive"])
    rows = [{"id": str(i), "text": t, "label": ("negative", "positive")[i % 2]} for i, t in enumerate(TEXTS)]
    write_jsonl(tmp_path / "test.jsonl", rows)
    path = write(
        tmp_path / "eval.yaml",
        "kind: prompt-eval\n"
        "models:\n  fp32: {path: cls}\n  int8: {path: cls, quantization: int8}\n"
        "data: {test: test.jsonl}\n"
        "prompts:\n  plain: {template: '{{ text }}'}\n"
        "output: {dir: out}\n",
    )
    result = llmtune("prompt-eval", path)
    assert result.code == 0, result.stderr
    predictions = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    by_model = {m: {p["id"]: p["scores"] for p in predictions if p["model"] == m} for m in ("fp32", "int8")}
    assert len(by_model["fp32"]) == len(by_model["int8"]) == len(TEXTS)
    # the int8 model really ran quantized (its probabilities move) and agrees with float32
    gaps = [
        abs(by_model["fp32"][i][label] - by_model["int8"][i][label])
        for i in by_model["fp32"]
        for label in ("negative", "positive")
    ]
    assert 0 < max(gaps) < 0.05, max(gaps)


def test_int8_is_refused_for_training_and_off_the_cpu(tmp_path: Path) -> None:
    path = finetune_recipe(tmp_path, "classification", "full")
    text = path.read_text().replace("num_heads: 2}}", "num_heads: 2}, quantization: int8}")
    write(path, text)
    result = llmtune("finetune", path)
    assert_bad_input(result, "model.quantization", "int8 is for inference", "method qlora")
    assert not (tmp_path / "run").exists()

    on_gpu = make_recipe(
        tmp_path, name="gpu.yaml", model={"path": "cls", "quantization": "int8", "device": "cuda"}
    )
    assert_bad_input(llmtune("bulk-infer", on_gpu), "model.quantization", "on CUDA use 8bit or 4bit")
    half = make_recipe(
        tmp_path, name="half.yaml", model={"path": "cls", "quantization": "int8", "dtype": "float16"}
    )
    assert_bad_input(llmtune("bulk-infer", half), "model.quantization", "float32")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- threads
def test_recipe_threads_win_over_the_environment_and_are_recorded(tmp_path: Path) -> None:
    path = finetune_recipe(tmp_path, "classification", "full")
    write(path, path.read_text().replace("num_heads: 2}}", "num_heads: 2}, threads: 1}"))
    result = run_cli("finetune", path, env={"LLMTUNE_THREADS": "2"})
    assert result.code == 0, result.stderr[-3000:]
    assert "cpu: 1 torch thread(s) (model.threads)" in result.stderr
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["device"] == "cpu (1 threads)"


def test_auto_threads_follow_llmtune_threads(tmp_path: Path) -> None:
    path = finetune_recipe(tmp_path, "classification", "full")
    result = run_cli("finetune", path, "--dry-run", env={"LLMTUNE_THREADS": "2"})  # nothing trains
    assert result.code == 0, result.stderr[-3000:]
    assert "cpu: 2 torch thread(s) (LLMTUNE_THREADS)" in result.stderr


def test_choose_threads_precedence() -> None:
    assert cpu.choose_threads(3, {"LLMTUNE_THREADS": "2", "OMP_NUM_THREADS": "4"}).threads == 3
    assert cpu.choose_threads("auto", {"LLMTUNE_THREADS": "2", "OMP_NUM_THREADS": "4"}).threads == 2
    assert cpu.choose_threads("auto", {"OMP_NUM_THREADS": "4"}) == cpu.ThreadChoice(None, "OMP_NUM_THREADS")
    for bad in ("0", "two", "-1"):
        with pytest.raises(BadInput) as caught:
            cpu.choose_threads("auto", {"LLMTUNE_THREADS": bad})
        assert "LLMTUNE_THREADS" in str(caught.value) and repr(bad) in str(caught.value)


def test_auto_rule_takes_the_cores_busy_now_away(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cpu.auto_threads(usable=2, busy=0.2) == 2  # idle machine: every usable core
    assert cpu.auto_threads(usable=2, busy=1.1) == 1  # one neighbour busy
    assert cpu.auto_threads(usable=8, busy=30.0) == 1  # overloaded: never below 1
    assert cpu.auto_threads(usable=2, busy=1.0, cores=64) == 2  # a 2-CPU quota on a big host
    assert cpu.auto_threads(usable=4, busy=3.0, cores=4) == 1

    # two /proc/stat readings: cpu0 stayed idle, cpu1 was half busy, cpu2 (not ours) fully busy
    before = cpu.cpu_times("cpu 0 0 0 0\ncpu0 10 0 0 100 0 0 0 0\ncpu1 10 0 0 100 0 0 0 0\ncpu2 0 0 0 0\n")
    after = cpu.cpu_times("cpu 0 0 0 0\ncpu0 10 0 0 120 0 0 0 0\ncpu1 20 0 0 110 0 0 0 0\ncpu2 20 0 0 0\n")
    assert cpu.busy_cores(before, after, {0, 1}) == pytest.approx(0.5)
    assert cpu.busy_cores(before, after, {0, 1, 2}) == pytest.approx(1.5)

    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(cpu, "_cgroup_quota", lambda: None)
    assert cpu.usable_cores() == 4
    monkeypatch.setattr(cpu, "_cgroup_quota", lambda: 3)  # a container allowed 3 CPUs' worth
    assert cpu.usable_cores() == 3
    # a load average that lags (a job that just ended) no longer counts: only what is busy now
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (2.4, 0.0, 0.0))
    monkeypatch.setattr(cpu, "sample_busy", lambda cpus, interval=cpu.SAMPLE_S: 0.3)
    choice = cpu.choose_threads("auto", {})
    assert choice.threads == 3 and "3 usable, 0.3 busy now" in choice.reason
    assert cpu.last_choice() == choice
    monkeypatch.setattr(cpu, "sample_busy", lambda cpus, interval=cpu.SAMPLE_S: 2.6)
    assert cpu.choose_threads("auto", {}).threads == 1
    monkeypatch.setattr(cpu, "sample_busy", lambda cpus, interval=cpu.SAMPLE_S: None)  # not Linux
    assert cpu.choose_threads("auto", {}).threads == 3


def test_busy_cores_are_sampled_from_this_machine() -> None:
    cpus = set(os.sched_getaffinity(0))
    busy = cpu.sample_busy(cpus, interval=0.05)
    assert busy is not None and 0.0 <= busy <= len(cpus)


def test_prompt_eval_records_the_threads_its_models_ran_with(tmp_path: Path) -> None:
    """prompt-eval writes its manifest before any model loads: the device (and the thread count
    model.threads chose) is recorded once the models have run."""
    saved_classifier(tmp_path / "cls", ["negative", "positive"])
    rows = [{"id": str(i), "text": t, "label": ("negative", "positive")[i % 2]} for i, t in enumerate(TEXTS)]
    write_jsonl(tmp_path / "test.jsonl", rows)
    path = write(
        tmp_path / "eval.yaml",
        "kind: prompt-eval\nmodels:\n  one: {path: cls, threads: 2}\ndata: {test: test.jsonl}\n"
        "prompts:\n  plain: {template: '{{ text }}'}\noutput: {dir: out}\n",
    )
    result = run_cli("prompt-eval", path)  # the tests' OMP_NUM_THREADS=1: torch starts with 1 thread
    assert result.code == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["device"] == "cpu (2 threads)"
