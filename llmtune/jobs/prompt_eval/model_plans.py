"""What prompt-eval decides about each model before anything is written: its head (and a trained
head's label order), that it exists, and that a chat prompt has a chat template to go through."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmtune.errors import BadInput
from llmtune.jobs.prompt_eval.prompts import PromptBuilder, chat_prompt
from llmtune.models.loading import inspect_model
from llmtune.models.positions import check_new_tokens
from llmtune.recipes.common import ModelRef
from llmtune.recipes.prompt_eval import PromptEvalRecipe
from llmtune.runs.lifecycle import source_of


@dataclass
class ModelPlan:
    """How one model is loaded and scored, decided before anything is written."""

    head: str  # causal_lm | classification
    head_labels: list[str] | None = None  # a trained classification head's labels, in its order
    tokenizer_dir: Path | None = None  # where its tokenizer is (None: a scratch model)


def plan_model(ref: ModelRef, recipe: PromptEvalRecipe, name: str, labels: list[str] | None) -> ModelPlan:
    """The model's head (forced by model_heads, else read from its adapter or config) and, for a
    trained classification head, its label order, so labels are matched by name, never by position.

    A sequence classifier, or a bare encoder (e.g. BertModel, which gets a new head), is scored by
    its classification head; anything else as a causal LM. Also checks that the model exists.
    """
    info = inspect_model(ref, recipe, f"models.{name}")
    # a bare encoder (e.g. BertModel) gets a new classification head; no architectures: a causal LM
    head = (
        recipe.model_heads.get(name) or info.head or ("classification" if info.architectures else "causal_lm")
    )
    if head == "causal_lm" and recipe.scoring == "generate":
        check_new_tokens(recipe, ref, recipe.max_new_tokens, "max_new_tokens", f"models.{name}")
    if head == "causal_lm" or labels is None:
        return ModelPlan(head, None, info.tokenizer_dir)
    if info.head_labels is None:
        return ModelPlan(head, labels, info.tokenizer_dir)  # a new or unnamed head: the recipe's labels
    if not set(labels) <= set(info.head_labels):
        raise BadInput(
            f"labels {labels} do not match the classification head of {ref.describe()} ({info.head_labels})",
            file=source_of(recipe),
            key="labels",
        )
    return ModelPlan(head, info.head_labels, info.tokenizer_dir)


def check_chat_templates(
    recipe: PromptEvalRecipe, builders: dict[str, PromptBuilder], plans: dict[str, ModelPlan]
) -> None:
    """Refuse chat prompts for a model without a chat template (before the run directory opens)."""
    chat = [name for name, b in builders.items() if b.spec.chat]
    if not chat:
        return
    from transformers import AutoTokenizer

    for name, ref in recipe.models.items():
        tokenizer = None  # scratch models' tokenizers have no chat template
        if plans[name].tokenizer_dir is not None:
            tokenizer = AutoTokenizer.from_pretrained(
                str(plans[name].tokenizer_dir), trust_remote_code=ref.trust_remote_code
            )
        chat_prompt(tokenizer, [{"role": "user", "content": "x"}], name, chat[0])
