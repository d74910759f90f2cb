"""The shared batched engine: batching must never change a greedy result, scores must equal a
plain forward pass, and out-of-memory must shrink the batch instead of failing."""

from __future__ import annotations

import pytest
import torch

from llmtune.errors import BadInput
from llmtune.inference.engine import Engine
from llmtune.models.loading import LoadedModel, build_scratch_model, build_tokenizer
from llmtune.recipes.common import ScratchModel

PROMPTS = [
    "hello world",
    "a",
    "the quick brown fox jumps over the lazy dog, twice over",
    "hello world",  # a duplicate: computed once, returned twice
    "zz top " * 6,
    "Review: terrible food\nSentiment:",
]


def scratch(architecture: str = "llama", labels: list[str] | None = None) -> LoadedModel:
    spec = ScratchModel(architecture=architecture, hidden_size=32, num_layers=2, num_heads=2)
    tokenizer = build_tokenizer(spec, [])
    torch.manual_seed(0)
    head = "classification" if labels else "causal_lm"
    model = build_scratch_model(spec, tokenizer, head=head, labels=labels).eval()
    return LoadedModel(model, tokenizer, "scratch", "cpu")


def row_by_row(loaded: LoadedModel, prompt: str, max_new_tokens: int) -> str:
    encoded = loaded.tokenizer(prompt, return_tensors="pt")
    out = loaded.model.generate(
        **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id
    )
    return loaded.tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_batched_greedy_equals_row_by_row_generate(architecture: str) -> None:
    loaded = scratch(architecture)
    # a small budget forces several batches of different padding
    engine = Engine(loaded, max_batch_tokens=120)
    got = engine.generate(PROMPTS, max_new_tokens=10)
    assert [g.texts[0] for g in got] == [row_by_row(loaded, p, 10) for p in PROMPTS]
    assert all(g.new_tokens == 10 for g in got)  # a random byte model never emits </s> here


def test_stop_strings_cut_the_text() -> None:
    loaded = scratch()
    engine = Engine(loaded)
    full = engine.generate(PROMPTS[:3], max_new_tokens=12)
    # two ASCII characters of the third text (a random byte model also emits partial UTF-8);
    # its prompt ends in "r": a match across the prompt's end must not stop the row
    text = full[2].texts[0]
    stop = next(text[i : i + 2] for i in range(1, len(text)) if text[i : i + 2].isascii())
    cut = engine.generate(PROMPTS[:3], max_new_tokens=12, stop=[stop])
    for before, after in zip(full, cut):
        assert stop not in after.texts[0]
        assert before.texts[0].startswith(after.texts[0])
    assert cut[2].texts[0] == full[2].texts[0][: full[2].texts[0].find(stop)]


def test_sampling_is_reproducible_from_the_seed() -> None:
    engine = Engine(scratch())
    kwargs = dict(max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9, num_return_sequences=3)
    first = engine.generate(PROMPTS[:2], seed=1, **kwargs)
    assert [g.texts for g in first] == [g.texts for g in engine.generate(PROMPTS[:2], seed=1, **kwargs)]
    assert all(len(g.texts) == 3 for g in first)
    assert [g.texts for g in first] != [g.texts for g in engine.generate(PROMPTS[:2], seed=2, **kwargs)]


def naive_logprob(loaded: LoadedModel, prompt: str, choice: str) -> tuple[float, int]:
    """lm-evaluation-harness: trailing spaces move to the choice; score only the choice tokens."""
    context = prompt.rstrip()
    choice = prompt[len(context) :] + choice
    context_ids = loaded.tokenizer(context)["input_ids"]
    whole = loaded.tokenizer(context + choice)["input_ids"]
    with torch.no_grad():
        logprobs = loaded.model(torch.tensor([whole])).logits[0].log_softmax(-1)
    cont = whole[len(context_ids) :]
    return sum(float(logprobs[len(context_ids) - 1 + k, t]) for k, t in enumerate(cont)), len(cont)


def test_score_choices_equal_a_plain_forward_pass() -> None:
    loaded = scratch()
    engine = Engine(loaded, max_batch_tokens=200)
    choices = [" positive", " negative", "x"]
    scores = engine.score_choices(PROMPTS, choices)
    for prompt, score in zip(PROMPTS, scores):
        expected = [naive_logprob(loaded, prompt, c) for c in choices]
        assert score.logprob_sum == pytest.approx([e[0] for e in expected], abs=1e-4)
        assert score.num_tokens == [e[1] for e in expected]
        assert score.logprob_mean == pytest.approx(
            [s / n for s, n in zip(score.logprob_sum, score.num_tokens)]
        )


def test_classify_causal_lm_is_a_softmax_over_label_likelihoods() -> None:
    engine = Engine(scratch())
    labels = ["negative", "positive", "mixed"]
    probs = engine.classify(PROMPTS, labels)
    # a prompt ending in whitespace already separates the label; the others get " label"
    sums = [
        engine.score_choices([prompt], [("" if prompt[-1].isspace() else " ") + x for x in labels])[0]
        for prompt in PROMPTS
    ]
    for p, s in zip(probs, sums):
        assert list(p) == labels
        assert sum(p.values()) == pytest.approx(1.0)
        expected = torch.softmax(torch.tensor(s.logprob_sum), 0).tolist()
        assert list(p.values()) == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_classify_with_a_classification_head_maps_label_names() -> None:
    engine = Engine(scratch("bert", labels=["neg", "pos"]))
    forward = engine.classify(PROMPTS, ["neg", "pos"])
    backward = engine.classify(PROMPTS, ["pos", "neg"])
    for f, b in zip(forward, backward):
        assert sum(f.values()) == pytest.approx(1.0)
        assert f["neg"] == pytest.approx(b["neg"]) and f["pos"] == pytest.approx(b["pos"])
    with pytest.raises(BadInput, match="do not match"):
        engine.classify(PROMPTS, ["good", "bad"])


def test_out_of_memory_halves_the_batch_and_keeps_results() -> None:
    loaded = scratch()
    prompts = ["abcd", "efgh", "ijkl", "mnop", "qrst", "abcd"]  # one length: one batch of 5
    expected = [g.texts for g in Engine(loaded).generate(prompts, max_new_tokens=6)]
    real_generate = loaded.model.generate
    sizes: list[int] = []

    def small_memory(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_generate(*args, **kwargs)

    loaded.model.generate = small_memory
    engine = Engine(loaded, batch_size="auto")
    assert [g.texts for g in engine.generate(prompts, max_new_tokens=6)] == expected
    assert sizes[0] == 5 and max(sizes[1:]) <= 2  # 5 unique prompts, then at most 2
    fixed = Engine(loaded, batch_size=4)
    with pytest.raises(torch.OutOfMemoryError):  # a fixed batch_size is what the user asked for
        fixed.generate(prompts, max_new_tokens=6)


def test_chat_template() -> None:
    loaded = scratch()
    engine = Engine(loaded)
    with pytest.raises(BadInput, match="no chat template"):
        engine.apply_chat_template("hi")
    loaded.tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    text = engine.apply_chat_template("hi there", system="be brief")
    assert text == "<|system|>be brief\n<|user|>hi there\n<|assistant|>"


def test_out_of_memory_is_recognised_as_accelerate_does() -> None:
    from llmtune.inference.batching import is_out_of_memory

    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_generation_leaves_the_callers_random_state_alone() -> None:
    """A training run measures before training through the engine; its dropout masks must not
    depend on that (the engine seeds sampling inside a forked RNG)."""
    loaded = scratch()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Engine(loaded).generate(["abcd"], max_new_tokens=3, temperature=0.7, seed=5)
    assert torch.equal(torch.rand(3), expected)
