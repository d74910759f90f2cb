"""The shared batched engine: batching must never change a greedy result, scores must equal a
plain forward pass, and out-of-memory must shrink the batch instead of failing."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import varied_weights

from llmtune.errors import BadInput
from llmtune.inference.engine import Engine
from llmtune.models.loading import LoadedModel
from llmtune.models.scratch import build_scratch_model, build_tokenizer
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


def chaotic(loaded: LoadedModel) -> LoadedModel:
    """A model whose next token depends on the whole context (conftest.varied_weights)."""
    varied_weights(loaded.model)
    return loaded


def new_token_ids(loaded: LoadedModel, prompt: str, max_new_tokens: int) -> list[int]:
    encoded = loaded.tokenizer(prompt, return_tensors="pt")
    out = loaded.model.generate(
        **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id
    )
    return out[0, encoded["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_batched_greedy_equals_row_by_row_generate(architecture: str) -> None:
    loaded = chaotic(scratch(architecture))
    alone = [new_token_ids(loaded, p, 10) for p in PROMPTS]
    # every row varies (measured: 6 to 10 distinct tokens of 10), so a misaligned row shows
    assert all(len(set(ids)) >= 5 for ids in alone), alone
    # a small budget forces several batches of different padding
    engine = Engine(loaded, max_batch_tokens=120)
    got = engine.generate(PROMPTS, max_new_tokens=10)
    decode = loaded.tokenizer.decode
    assert [g.texts[0] for g in got] == [decode(ids, skip_special_tokens=True) for ids in alone]
    assert [g.new_tokens for g in got] == [len(ids) for ids in alone]


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
    assert cut[2].new_tokens < full[2].new_tokens  # the row stopped, it did not run to the end


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
    prompts = ["abcd", "efgh", "ijkl", "mnop", "qrst", "abcd"]  # 5 unique prompts of one length
    expected = [g.texts for g in Engine(loaded).generate(prompts, max_new_tokens=6)]
    sizes = record_batch_sizes(loaded, fail_above=2)
    engine = Engine(loaded, batch_size="auto")
    assert [g.texts for g in engine.generate(prompts, max_new_tokens=6)] == expected
    assert sizes[0] == 5 and max(sizes[1:]) <= 2  # 5 unique prompts, then at most 2
    fixed = Engine(loaded, batch_size=4)
    with pytest.raises(torch.OutOfMemoryError):  # a fixed batch_size is what the user asked for
        fixed.generate(prompts, max_new_tokens=6)


def record_batch_sizes(
    loaded: LoadedModel, fail_above: int | None = None, shapes: list[tuple[int, int]] | None = None
) -> list[int]:
    """Rows of every forward pass the model makes from now on, and (rows, width) in `shapes`
    (out-of-memory above `fail_above` rows, as a small accelerator would)."""
    real_forward = loaded.model.forward
    sizes: list[int] = []
    shapes = [] if shapes is None else shapes

    @functools.wraps(real_forward)  # the same signature: the engine asks it about logits_to_keep
    def forward(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        shapes.append(tuple(kwargs["input_ids"].shape))
        if fail_above is not None and sizes[-1] > fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(*args, **kwargs)

    loaded.model.forward = forward
    return sizes


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


# ---- continuous batching: rows leave the batch when they end, waiting rows join


def lively(architecture: str = "llama") -> LoadedModel:
    """A scratch model whose greedy text changes from token to token (the default initialisation
    repeats one token, which would hide a wrong position or a misaligned cache)."""
    loaded = scratch(architecture)
    torch.manual_seed(0)
    with torch.no_grad():
        for weights in loaded.model.parameters():
            if weights.dim() > 1:
                weights.normal_(0, 0.3)
    return loaded


def row_tokens(loaded: LoadedModel, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy new tokens of one prompt through plain `model.generate`, batch 1."""
    ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = loaded.model.generate(
        input_ids=ids,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
@pytest.mark.parametrize("batch_size", ["auto", 2])
def test_rows_that_end_leave_the_batch_and_waiting_rows_join(
    architecture: str, batch_size: int | str
) -> None:
    loaded = lively(architecture)
    unique = list(dict.fromkeys(PROMPTS))
    full = {p: row_tokens(loaded, p, 24) for p in unique}
    eos = full[PROMPTS[0]][3]  # ends the first row after 3 tokens, others later or never
    loaded.model.generation_config.eos_token_id = eos
    # the engine's text ends at end-of-sequence, or at padding (as generate's batches pad it)
    ends = {eos, loaded.tokenizer.pad_token_id}
    expected = {p: t[: next((n for n, x in enumerate(t) if x in ends), len(t))] for p, t in full.items()}
    lengths = sorted(len(t) for t in expected.values())
    assert lengths[0] == 3 and lengths[-1] == 24, lengths  # very different lengths share a batch
    shapes: list[tuple[int, int]] = []
    record_batch_sizes(loaded, shapes=shapes)
    got = Engine(loaded, batch_size=batch_size).generate(PROMPTS, max_new_tokens=24)
    for prompt, generation in zip(PROMPTS, got):
        assert generation.texts == [loaded.tokenizer.decode(expected[prompt], skip_special_tokens=True)]
        assert generation.new_tokens == len(expected[prompt])
    # the prefill makes each row's first token; a decode step feeds each row once per further
    # token, the end-of-sequence one included: a row that ended costs nothing more
    fed = sum(rows for rows, width in shapes if width == 1)
    assert fed == sum(min(len(t) + 1, 24) - 1 for t in expected.values())
    prefills = [k for k, (_, width) in enumerate(shapes) if width > 1]
    if batch_size == 2:  # 5 prompts, 2 rows at a time: later prompts join a running batch
        assert max(rows for rows, _ in shapes) == 2 and len(prefills) >= 3
        assert any(shapes[k - 1][1] == 1 for k in prefills[1:])


def test_sampling_does_not_depend_on_the_batch() -> None:
    engine = Engine(lively())
    kwargs = dict(max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9, num_return_sequences=2, seed=3)
    together = engine.generate(PROMPTS[:3], **kwargs)
    alone = engine.generate([PROMPTS[2]], **kwargs)
    assert together[2].texts == alone[0].texts
    assert together[2].texts[0] != together[2].texts[1]  # each copy draws its own samples


def peft_model(kind: str) -> LoadedModel:
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    loaded = lively()
    torch.manual_seed(1)
    if kind == "lora":  # non-zero adapters, so that a path that skipped them would show
        config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    else:
        config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    model = get_peft_model(loaded.model, config).eval()
    return LoadedModel(model, loaded.tokenizer, "scratch", "cpu")


def tiny_config_model(architecture: str) -> LoadedModel:
    """Qwen2, and Mistral with a 4-token sliding window, at scratch size on the byte tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = scratch().tokenizer
    config = AutoConfig.for_model(
        architecture,
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=4 if architecture == "mistral" else None,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    loaded = LoadedModel(model, tokenizer, "scratch", "cpu")
    with torch.no_grad():
        for weights in model.parameters():
            if weights.dim() > 1:
                weights.normal_(0, 0.3)
    return loaded


@pytest.mark.parametrize(
    ("model", "loop"),
    [("qwen2", True), ("lora", True), ("mistral-sliding-window", False)],
)
def test_every_model_gets_row_by_row_greedy_text(
    model: str, loop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The continuous loop where it can drive the model; HF generate where it cannot (here a
    sliding-window cache)."""
    import llmtune.inference.hf_generate as hf_generate

    if model == "lora":
        loaded = peft_model(model)
    else:
        loaded = tiny_config_model(model.split("-")[0])
    padded_calls: list[int] = []
    real_padded = hf_generate.padded_generate

    def padded(*args, **kwargs):
        padded_calls.append(1)
        return real_padded(*args, **kwargs)

    monkeypatch.setattr(hf_generate, "padded_generate", padded)
    got = Engine(loaded, max_batch_tokens=120).generate(PROMPTS, max_new_tokens=10)
    expected = [row_tokens(loaded, p, 10) for p in PROMPTS]
    assert [g.texts[0] for g in got] == [
        loaded.tokenizer.decode(e, skip_special_tokens=True) for e in expected
    ]
    assert bool(padded_calls) != loop


def test_prompt_tuning_goes_through_generate() -> None:
    """PEFT prepends its virtual tokens inside its own generate; the loop must not bypass it."""
    from llmtune.inference.hf_generate import continuous_model

    assert continuous_model(peft_model("prompt_tuning").model) is None
    lora = peft_model("lora").model
    assert continuous_model(lora) is lora.get_base_model()


def test_prompts_joining_together_are_prefilled_in_runs_of_similar_length() -> None:
    from llmtune.inference.batching import PADDING_SHARE
    from llmtune.inference.continuous import padding_groups

    lengths = [200, 190, 180, 100, 95, 20, 20, 3]
    groups = padding_groups(lengths)
    assert sorted(k for g in groups for k in g) == list(range(len(lengths)))  # every prompt, once
    assert groups == [[0, 1, 2, 3], [4], [5, 6], [7]]
    for group in groups:  # left padding stays under its share in every prefill
        longest = lengths[group[0]]
        padding = sum(longest - lengths[k] for k in group)
        assert padding <= PADDING_SHARE * longest * len(group)
    assert padding_groups([]) == [] and padding_groups([7]) == [[0]]
