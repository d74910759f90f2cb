"""Models that start from random weights (`model.scratch`): a llama, gpt2 or bert of the requested
size, with a tokenizer built here (byte-level, or BPE trained on the training text), so that
nothing is downloaded. The tests' tiny models are made the same way."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llmtune.errors import BadInput
from llmtune.models.info import Head
from llmtune.recipes.common import ScratchModel

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def build_tokenizer(spec: ScratchModel, corpus: Iterable[str]) -> Any:
    """A byte-level tokenizer (no download), or a BPE one trained on `corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if spec.tokenizer == "byte":
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        vocab = {token: i for i, token in enumerate(SPECIALS + alphabet)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        tok.pre_tokenizer = byte_level
    else:
        texts = [t for t in corpus if t]
        if not texts:
            raise BadInput(
                "scratch.tokenizer: train needs training text in data.train", key="model.scratch.tokenizer"
            )
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = byte_level
        trainer = trainers.BpeTrainer(
            vocab_size=spec.vocab_size,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
    tok.decoder = decoders.ByteLevel()
    if spec.architecture == "bert":
        single, pair = "<s> $A </s>", "<s> $A </s> $B:1 </s>:1"
    else:
        single, pair = "<s> $A", "<s> $A $B:1"
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=spec.max_position_embeddings,
    )
    if spec.architecture == "bert":
        tokenizer.cls_token, tokenizer.sep_token = "<s>", "</s>"
    return tokenizer


def build_scratch_model(
    spec: ScratchModel, tokenizer: Any, *, head: Head, labels: list[str] | None, key: str = "model"
) -> Any:
    """A randomly initialised llama / gpt2 / bert of the requested size."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        BertConfig,
        GPT2Config,
        LlamaConfig,
    )

    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if labels is not None:
        common.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    inner = spec.intermediate_size or 4 * spec.hidden_size
    if spec.architecture == "llama":
        config = LlamaConfig(
            hidden_size=spec.hidden_size,
            intermediate_size=inner,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_heads,
            max_position_embeddings=spec.max_position_embeddings,
            tie_word_embeddings=True,
            **common,
        )
    elif spec.architecture == "gpt2":
        config = GPT2Config(
            n_embd=spec.hidden_size,
            n_layer=spec.num_layers,
            n_head=spec.num_heads,
            n_inner=inner,
            n_positions=spec.max_position_embeddings,
            **common,
        )
    else:
        if head == "causal_lm":
            raise BadInput(
                "bert is an encoder and cannot be a causal LM; use llama or gpt2",
                key=f"{key}.scratch.architecture",
            )
        config = BertConfig(
            hidden_size=spec.hidden_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            intermediate_size=inner,
            max_position_embeddings=spec.max_position_embeddings,
            **common,
        )
    cls = AutoModelForSequenceClassification if head == "classification" else AutoModelForCausalLM
    return cls.from_config(config)
