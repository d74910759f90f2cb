"""`engine: llamacpp` on an f16 GGUF of a tiny llama writes the greedy text engine hf writes, token
for token, and the same soft labels (within 0.02: f16 weights); greedy rows decoded in parallel
equal one at a time; sampling is seeded per row; stop strings and max tokens hold; SIGTERM then a
rerun does each row once. Needs llama-cpp-python (`make test-llamacpp`) and the GGUF writer of
`llmtune export --format gguf`."""

from __future__ import annotations

import signal
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from conftest import by_id, make_recipe, make_rows, read_jsonl, write_jsonl
from conftest import invoke as llmtune

pytest.importorskip("llama_cpp")
gguf_format = pytest.importorskip("llmtune.export.gguf_format")

PROB_TOLERANCE = 0.02  # f16 weights in llama.cpp vs float32 torch, on weights spread 8x wider than usual


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny llama with spread-out weights (so greedy text varies by prompt) saved both ways."""
    import torch

    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    folder = tmp_path_factory.mktemp("models")
    spec = ScratchModel(architecture="llama", hidden_size=64, num_layers=2, num_heads=2)
    tokenizer = build_tokenizer(spec, [])
    model = build_scratch_model(spec, tokenizer, head="causal_lm", labels=None).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.ndim == 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    model.save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    record = gguf_format.write_gguf(model, tokenizer, folder, "f16", "tiny")
    return {"hf": folder / "hf", "gguf": folder / record["file"]}


def job(tmp_path: Path, name: str, path: Path, **overrides: Any) -> Path:
    engine = "llamacpp" if path.suffix == ".gguf" else "hf"
    return make_recipe(
        tmp_path,
        name=f"{name}.yaml",
        model={"path": str(path)},
        engine=engine,
        output={"path": f"out/{name}.jsonl"},
        **overrides,
    )


def test_greedy_text_and_soft_labels_match_engine_hf(tmp_path: Path, models: dict[str, Path]) -> None:
    settings = {"generation": {"max_new_tokens": 8}}
    for name in ("hf", "gguf"):
        result = llmtune("bulk-infer", job(tmp_path, name, models[name], **settings))
        assert result.code == 0, result.stderr
    expected, got = by_id(tmp_path / "out" / "hf.jsonl"), by_id(tmp_path / "out" / "gguf.jsonl")
    assert sorted(got) == sorted(expected) == [r["id"] for r in make_rows(30)]
    assert [got[k]["output"] for k in sorted(got)] == [expected[k]["output"] for k in sorted(expected)]
    assert len({r["output"] for r in got.values()}) > 3  # the texts differ by prompt: a real check

    labels = {"task": "classify", "labels": ["good", "bad"]}
    for name in ("hf", "gguf"):
        result = llmtune("bulk-infer", job(tmp_path, f"{name}-cls", models[name], **labels))
        assert result.code == 0, result.stderr
    expected, got = by_id(tmp_path / "out" / "hf-cls.jsonl"), by_id(tmp_path / "out" / "gguf-cls.jsonl")
    for key, row in expected.items():
        assert got[key]["scores"] == pytest.approx(row["scores"], abs=PROB_TOLERANCE)


def test_sampling_is_seeded_per_row_and_stop_strings_cut(models: dict[str, Path]) -> None:
    from llmtune.inference.llamacpp_engine import LlamaCppEngine

    engine = LlamaCppEngine(models["gguf"], threads=1, max_length=64, max_new_tokens=12)
    try:
        prompts = ["Q: good\nA:", "Q: slow\nA:"]
        sample = {"max_new_tokens": 12, "temperature": 1.0, "num_return_sequences": 2}
        first = engine.generate(prompts, seed=1, **sample)
        assert engine.generate(prompts, seed=1, **sample) == first
        assert engine.generate(prompts[:1], seed=1, **sample)[0] == first[0]  # not the batch's doing
        assert engine.generate(prompts, seed=2, **sample) != first
        greedy = engine.generate(prompts, max_new_tokens=12)
        assert all(g.new_tokens <= 12 for g in greedy)
        text = greedy[0].texts[0]
        stop = text[3:5]
        assert (
            stop
            and engine.generate(prompts[:1], max_new_tokens=12, stop=[stop])[0].texts[0]
            == text[: text.find(stop)]
        )
    finally:
        engine.close()


def test_greedy_rows_in_parallel_equal_one_at_a_time(models: dict[str, Path]) -> None:
    """Greedy rows decoded PARALLEL_SEQUENCES at a time (slots reused as rows end) give the text
    and token counts of `Llama`'s one-at-a-time path, with end tokens, max tokens and stop strings."""
    from llmtune.inference.llamacpp_engine import PARALLEL_SEQUENCES, LlamaCppEngine

    engine = LlamaCppEngine(models["gguf"], threads=1, max_length=64, max_new_tokens=12)
    try:
        words = ["good", "slow", "bad", "fine", "late", "broken", "great", "cold"]
        prompts = [
            f"Q: {words[k % 8]} {'very ' * (k % 5)}item {k}\nA:" for k in range(3 * PARALLEL_SEQUENCES)
        ]

        def one_at_a_time(max_new: int, stop: list[str]) -> list[tuple[str, int]]:
            return [engine._complete(engine.encode(p), max_new, 0.0, 1.0, None, stop) for p in prompts]

        def parallel(max_new: int, stop: list[str]) -> list[tuple[str, int]]:
            return [
                (g.texts[0], g.new_tokens)
                for g in engine.generate(prompts, max_new_tokens=max_new, stop=stop)
            ]

        expected = one_at_a_time(12, [])
        assert parallel(12, []) == expected and engine.parallel is not None
        assert len({text for text, _ in expected}) > 3
        stop = expected[0][0][3:5]
        assert stop and parallel(12, [stop]) == one_at_a_time(12, [stop])
        assert parallel(5, []) == one_at_a_time(5, [])
        # a common token as end-of-sequence: rows end early at different steps, freeing slots
        steps = (
            engine.llm.generate(engine.encode(p), temp=0.0, top_k=1, repeat_penalty=1.0) for p in prompts
        )
        tokens = Counter(t for row in steps for t in list(islice(row, 12))[1:])
        engine.eos_ids = {*engine.eos_ids, tokens.most_common(1)[0][0]}
        early = one_at_a_time(12, [])
        assert len({n for _, n in early}) > 2
        assert parallel(12, []) == early
    finally:
        engine.close()


@pytest.mark.slow
def test_sigterm_then_a_rerun_does_every_row_once(tmp_path: Path, models: dict[str, Path]) -> None:
    from test_signals import finish, lines, start, wait_for

    slow = "{% for i in range(600) %}{% for j in range(1000) %}{% endfor %}{% endfor %}{{ text }}"
    write_jsonl(tmp_path / "in.jsonl", make_rows(40))
    recipe = job(tmp_path, "res", models["gguf"], template=slow, batching={"chunk_rows": 1})
    out = tmp_path / "out" / "res.jsonl"
    proc, log = start(tmp_path, "bulk-infer", recipe)
    wait_for(proc, log, lambda: lines(out) >= 1, "a row in the journal")
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 143, log.read_text()[-3000:]
    assert 1 <= len(by_id(out)) < 40
    rerun = llmtune("bulk-infer", recipe, "--set", "template='{{ text }}'")
    assert rerun.code == 0, rerun.stderr
    assert sorted(by_id(out)) == [r["id"] for r in make_rows(40)] and len(read_jsonl(out)) == 40
