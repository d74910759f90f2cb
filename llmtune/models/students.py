"""Making a smaller model out of a bigger one, for distillation students.

`keep_blocks` keeps some of a model's transformer blocks (DistilBERT's initialisation: the
teacher's embeddings, every other block, its head). `trim_vocabulary` keeps only the tokens some
texts use, since in small encoders the embedding matrix is much of the model (all-MiniLM-L6-v2:
11.7M of 22.7M parameters). Both return standard transformers models and tokenizers: a student
saves with `save_pretrained` and loads with plain `AutoModel*.from_pretrained`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

from llmtune.errors import BadInput


def blocks_of(model: Any) -> tuple[Any, str, Any]:
    """(parent module, attribute, ModuleList) of the model's transformer blocks: the first
    ModuleList as long as config.num_hidden_layers (bert encoder.layer, llama layers, gpt2 h...)."""
    import torch

    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            parent_name, _, attribute = name.rpartition(".")
            return model.get_submodule(parent_name), attribute, module
    raise BadInput(
        f"cannot find the {count} transformer blocks of {type(model).__name__}; "
        "give the student as path: or scratch: instead",
        key="student.from_teacher",
    )


def keep_blocks(teacher: Any, layers: list[int]) -> Any:
    """A copy of `teacher` with only the blocks `layers` (in that order), everything else shared
    in value: embeddings, final norm, head."""
    import torch

    count = teacher.config.num_hidden_layers
    beyond = [i for i in layers if i >= count]
    if beyond:
        raise BadInput(
            f"the teacher has blocks 0..{count - 1}; there is no block {beyond[0]}",
            key="student.from_teacher.layers",
        )
    if len(layers) >= count:
        raise BadInput(
            f"the student keeps {len(layers)} of the teacher's {count} blocks: it must keep fewer "
            "to be smaller",
            key="student.from_teacher.layers",
        )
    student = copy.deepcopy(teacher)
    parent, attribute, blocks = blocks_of(student)
    kept = torch.nn.ModuleList([blocks[i] for i in layers])
    for new_index, block in enumerate(kept):
        for module in block.modules():  # the KV cache is indexed by a block's position
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    setattr(parent, attribute, kept)
    student.config.num_hidden_layers = len(layers)
    if isinstance(getattr(student.config, "layer_types", None), list):
        student.config.layer_types = [student.config.layer_types[i] for i in layers]
    return student


def trim_vocabulary(model: Any, tokenizer: Any, texts: Iterable[str], max_length: int) -> tuple[Any, Any]:
    """`model` and a new tokenizer that keep only the tokens `texts` use, the special tokens, and
    single characters (so unseen words still encode, as characters). Texts the data holds
    tokenize exactly as before: WordPiece and BPE pick the same tokens from a vocabulary that
    still holds every token (and, for BPE, every merge) they used."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if not getattr(tokenizer, "is_fast", False):
        raise BadInput("trim_vocab needs a fast tokenizer (tokenizer.json)", key="student.trim_vocab")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = spec["model"]["type"]
    if kind not in ("WordPiece", "BPE"):
        raise BadInput(
            f"trim_vocab handles WordPiece and BPE tokenizers; this one is {kind}", key="student.trim_vocab"
        )
    vocab: dict[str, int] = spec["model"]["vocab"]
    used = _used_ids(tokenizer, texts, max_length)
    used |= {t["id"] for t in spec.get("added_tokens", [])} | set(tokenizer.all_special_ids)
    by_id = {i: t for t, i in vocab.items()}
    keep = {by_id[i] for i in used if i in by_id}
    keep |= {t for t in vocab if len(t) == 1}
    if kind == "WordPiece":
        prefix = spec["model"].get("continuing_subword_prefix") or "##"
        keep |= {t for t in vocab if t.startswith(prefix) and len(t) == len(prefix) + 1}
    else:
        keep, spec["model"]["merges"] = _merge_closure(keep, spec["model"]["merges"])
    old_ids = sorted({vocab[t] for t in keep} | {t["id"] for t in spec.get("added_tokens", [])})
    new_id = {old: new for new, old in enumerate(old_ids)}
    spec["model"]["vocab"] = {t: new_id[i] for t, i in sorted(vocab.items(), key=lambda x: x[1]) if t in keep}
    for added in spec.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    _remap_ids(spec.get("post_processor"), new_id)
    trimmed = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        model_max_length=tokenizer.model_max_length,
        padding_side=tokenizer.padding_side,
        **{k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)},
    )
    _shrink_embeddings(model, old_ids, new_id)
    return model, trimmed


def _used_ids(tokenizer: Any, texts: Iterable[str], max_length: int) -> set[int]:
    used: set[int] = set()
    batch: list[str] = []
    for text in [*texts, None]:
        if text is not None:
            batch.append(text)
        if batch and (text is None or len(batch) == 256):
            for ids in tokenizer(batch, truncation=True, max_length=max_length)["input_ids"]:
                used.update(ids)
            batch = []
    return used


def _merge_closure(keep: set[str], merges: list[Any]) -> tuple[set[str], list[Any]]:
    """BPE: every kept token keeps the merge that builds it and, in turn, its two parts; merges
    are kept in their order (their rank decides tokenization)."""
    pairs = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in merges]
    built_by: dict[str, tuple[str, str]] = {}
    for a, b in pairs:
        built_by.setdefault(a + b, (a, b))
    pending = list(keep)
    while pending:
        token = pending.pop()
        for part in built_by.get(token, ()):
            if part not in keep:
                keep.add(part)
                pending.append(part)
    kept = [m for m, (a, b) in zip(merges, pairs) if a in keep and b in keep and a + b in keep]
    return keep, kept


def _remap_ids(node: Any, new_id: dict[int, int]) -> None:
    """Special-token ids inside a post-processor (Template, Bert, Roberta, Sequence)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                node[key] = [new_id.get(i, i) for i in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:
                node[key] = [value[0], new_id.get(value[1], value[1])]
            else:
                _remap_ids(value, new_id)
    elif isinstance(node, list):
        for item in node:
            _remap_ids(item, new_id)


def _shrink_embeddings(model: Any, old_ids: list[int], new_id: dict[int, int]) -> None:
    import torch

    index = torch.tensor(old_ids, dtype=torch.long)
    embeddings = model.get_input_embeddings()
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = output is not None and output.weight is embeddings.weight
    pad = new_id.get(embeddings.padding_idx) if embeddings.padding_idx is not None else None
    smaller = torch.nn.Embedding(len(old_ids), embeddings.embedding_dim, padding_idx=pad, device="meta")
    smaller.weight = torch.nn.Parameter(
        embeddings.weight.detach()[index.to(embeddings.weight.device)].clone()
    )
    model.set_input_embeddings(smaller)
    if output is not None:
        rows = index.to(output.weight.device)
        output.weight = smaller.weight if tied else torch.nn.Parameter(output.weight.detach()[rows].clone())
        if getattr(output, "bias", None) is not None:
            output.bias = torch.nn.Parameter(output.bias.detach()[rows].clone())
        output.out_features = len(old_ids)
    config = model.config
    config.vocab_size = len(old_ids)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            setattr(config, name, new_id.get(value, value))
