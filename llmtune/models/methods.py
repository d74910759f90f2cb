"""Which weights train: peft adapters (LoRA, QLoRA, DoRA, IA3, prefix, prompt tuning), adapter
layers (ours: `llmtune.models.adapters`), all of them, or only the top blocks. Shared by finetune,
distill and rlhf.

A model that already carries an earlier run's adapter (model.path is that run's model/) is
continued: `method.stack: false` trains the same adapter further, `true` freezes it (merged into
the base where it can be) and trains a new one on top."""

from __future__ import annotations

from typing import Any

from llmtune.console import say
from llmtune.errors import BadInput
from llmtune.models.adapters import apply_adapter_layers
from llmtune.models.bottlenecks import adapter_sets, transformer_blocks
from llmtune.models.info import Head
from llmtune.recipes.methods import MERGEABLE, MethodSpec

HEAD_NAMES = ("classifier", "score", "lm_head", "pre_classifier", "pooler")
# the peft_type each method trains, to tell whether an earlier run's adapter can be continued
PEFT_TYPES = {
    "lora": "LORA",
    "qlora": "LORA",
    "dora": "LORA",
    "ia3": "IA3",
    "prefix": "PREFIX_TUNING",
    "prompt": "PROMPT_TUNING",
}


def peft_config(method: MethodSpec, head: Head, tokenizer_path: str | None = None) -> Any:
    """The peft config for an adapter method, or None for full / last_layers."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, TaskType

    task_type = TaskType.SEQ_CLS if head == "classification" else TaskType.CAUSAL_LM
    if method.type in ("lora", "qlora", "dora"):
        return LoraConfig(
            task_type=task_type,
            r=method.r,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            target_modules=method.target_modules,
            use_dora=method.type == "dora",
        )
    if method.type == "ia3":
        return IA3Config(
            task_type=task_type,
            target_modules=method.target_modules,
            feedforward_modules=[] if method.target_modules == "all-linear" else None,
        )
    if method.type == "prefix":
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=method.num_virtual_tokens)
    if method.type == "prompt":
        if method.init_text:
            return PromptTuningConfig(
                task_type=task_type,
                num_virtual_tokens=method.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=method.init_text,
                tokenizer_name_or_path=tokenizer_path,
            )
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=method.num_virtual_tokens)
    return None


def apply_method(model: Any, method: MethodSpec, head: Head, tokenizer: Any = None) -> Any:
    """Wrap or freeze `model` so that only the weights `method` names will train.

    `tokenizer` (an object or a folder) is needed only to initialise a soft prompt from
    `method.init_text`.
    """
    if adapter_sets(model):
        return _after_adapter_layers(model, method, head)
    if hasattr(model, "peft_config"):  # an earlier run's peft adapter, loaded by load_model
        model = _after_peft_adapter(model, method)
        if hasattr(model, "peft_config"):
            return model
        method = method.model_copy(update={"stack": False})  # merged: a plain base from here on
    if method.stack:
        raise BadInput(
            "method.stack: true stacks a new adapter on an earlier run's; model.path must then be that "
            "run's model/ folder (an adapter), but it is a plain model",
            key="method.stack",
        )
    if method.type == "adapter":
        return apply_adapter_layers(model, method, head)
    if method.type == "full":
        for p in model.parameters():
            p.requires_grad = True
        return model
    if method.type == "last_layers":
        return freeze_all_but_top(model, method.layers)
    from peft import get_peft_model

    if method.type == "qlora":
        model = _prepare_quantized(model)
    if method.init_text and tokenizer is not None and not isinstance(tokenizer, str):
        import tempfile

        # peft reads the init_text tokenizer from a folder; scratch tokenizers have none
        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save_pretrained(folder)
            return get_peft_model(model, peft_config(method, head, folder))
    return get_peft_model(model, peft_config(method, head, tokenizer))


def previous_adapter(model: Any) -> str | None:
    """The kind of adapter an earlier run left on `model` (a peft type such as LORA, or "adapter"
    for adapter layers), or None for a plain model."""
    if adapter_sets(model):
        return "adapter"
    config = getattr(model, "peft_config", {}).get("default")
    return None if config is None else str(getattr(config.peft_type, "value", config.peft_type))


def _after_adapter_layers(model: Any, method: MethodSpec, head: Head) -> Any:
    if method.type != "adapter":
        raise BadInput(
            f"model.path holds an earlier run's adapter layers; method.type {method.type} cannot build on "
            "them: adapter layers are non-linear and cannot be merged into the weights. Use method.type: "
            "adapter (stack: false trains them further, stack: true adds new ones on top)",
            key="method.type",
        )
    say(
        "adapter layers: "
        + ("a new set on top of the earlier run's" if method.stack else "training the earlier run's further")
    )
    return apply_adapter_layers(model, method, head)


def _after_peft_adapter(model: Any, method: MethodSpec) -> Any:
    """Continue the earlier run's peft adapter (returned, trainable), or merge it into the base
    for a new method to train on top (the merged base model is returned)."""
    kind = previous_adapter(model)
    config = model.peft_config["default"]
    same = PEFT_TYPES.get(method.type) == kind and getattr(config, "use_dora", False) == (
        method.type == "dora"
    )
    if not method.stack:
        if not same:
            raise BadInput(
                f"model.path is an earlier run's {kind} adapter; method.type {method.type} cannot continue it. "
                f"Use the method it was trained with to train it further, or method.stack: true to merge it "
                f"into the base and train a new {method.type} on top",
                key="method.type",
            )
        say(f"continuing the earlier run's {kind} adapter (its own settings: the recipe's are not used)")
        return model
    if kind not in {PEFT_TYPES[m] for m in MERGEABLE}:
        raise BadInput(
            f"model.path is an earlier run's {kind} adapter, which cannot be merged into the weights, so "
            "nothing can be stacked on it; train it further with method.stack: false",
            key="method.stack",
        )
    say(f"merging the earlier run's {kind} adapter into the base; training a new {method.type} on top")
    return model.merge_and_unload()


def _prepare_quantized(model: Any) -> Any:
    """peft's preparation of a k-bit base for training. On a base that was loaded unquantized it
    would upcast every weight to fp32: the opposite of QLoRA, so that is refused as a bug."""
    from peft import prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return prepare_model_for_kbit_training(model)
    if all(p.is_meta for p in model.parameters()):
        return model  # a dry run's empty model (load_model(empty_weights=True)): nothing to prepare
    raise RuntimeError(
        "qlora: the base model was loaded unquantized; load it with load_model(..., method='qlora')"
    )


def freeze_all_but_top(model: Any, n_layers: int) -> Any:
    """Train only the top `n_layers` blocks, the final norm and the head."""
    blocks = transformer_blocks(model)
    if n_layers > len(blocks):
        raise BadInput(
            f"the model has {len(blocks)} blocks; cannot train the top {n_layers}", key="method.layers"
        )
    for p in model.parameters():
        p.requires_grad = False
    for block in list(blocks)[-n_layers:]:
        for p in block.parameters():
            p.requires_grad = True
    for name, module in model.named_modules():
        last = name.split(".")[-1]
        if last in HEAD_NAMES or last in ("norm", "ln_f", "final_layer_norm"):
            for p in module.parameters():
                p.requires_grad = True
    return model
