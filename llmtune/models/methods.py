"""Which weights train: peft adapters (LoRA, QLoRA, DoRA, IA3, prefix, prompt tuning), all of
them, or only the top blocks. Shared by finetune, distill and rlhf."""

from __future__ import annotations

from typing import Any

from llmtune.errors import BadInput
from llmtune.models.info import Head
from llmtune.recipes.finetune import MethodSpec

HEAD_NAMES = ("classifier", "score", "lm_head", "pre_classifier", "pooler")


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


def transformer_blocks(model: Any) -> Any:
    """The ModuleList of transformer blocks (layers / h / layer / blocks)."""
    import torch

    best = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in (
            "layers",
            "h",
            "layer",
            "blocks",
        ):
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise BadInput("last_layers: cannot find the transformer blocks of this model", key="method.type")
    return best


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
