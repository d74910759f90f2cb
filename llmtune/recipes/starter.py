"""`llmtune init KIND`: a commented starter recipe generated from the pydantic models.

The comments are the fields' docstrings and the values are the defaults, overlaid with a few
realistic example values per kind, so the starter can never drift from what validation accepts.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from llmtune.recipes.validate import _unwrap

EXAMPLES: dict[str, dict[str, Any]] = {
    "finetune": {
        "name": "sentiment-lora",
        "task": "classification",
        "model": {"path": "sentence-transformers/all-MiniLM-L6-v2"},
        "labels": ["negative", "positive"],
        "method": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"},
        "data": {
            "train": "data/train.jsonl",
            "test": "data/test.jsonl",
            "split": {"validation": 0.1, "seed": 42},
            "columns": {"text": "review", "label": "sentiment"},
            "max_length": 128,
        },
        "training": {
            "epochs": 3,
            "batch_size": 16,
            "learning_rate": 5.0e-4,
            "early_stopping": {"patience": 3, "metric": "eval_loss"},
        },
    },
    "bulk-infer": {
        "name": "nightly-labels",
        "model": {"path": "runs/sentiment-lora/model"},
        "input": {"path": "inbox/*.jsonl", "id_column": "id", "columns": {"text": "review"}},
        "template": "{{ text }}",
        "task": "classify",
        "labels": ["negative", "positive"],
        "output": {"path": "out/labels.jsonl", "errors": "out/labels.errors.jsonl"},
    },
    "prompt-eval": {
        "name": "sentiment-prompts",
        "models": {"base": {"path": "Qwen/Qwen2.5-0.5B-Instruct"}},
        "data": {
            "test": "data/test.jsonl",
            "train": "data/train.jsonl",
            "columns": {"text": "review", "label": "sentiment"},
        },
        "labels": ["negative", "positive"],
        "prompts": {
            "zero_shot": {"template": "Review: {{ text }}\nSentiment:"},
            "few_shot": {
                "template": "{{ examples }}Review: {{ text }}\nSentiment:",
                "shots": 4,
                "example_template": "Review: {{ text }}\nSentiment: {{ label }}\n\n",
                "selection": "balanced",
            },
        },
    },
    "distill": {
        "name": "sentiment-distilled",
        "teacher": {"path": "runs/sentiment-full/model"},
        "student": {"from_teacher": {"layers": [0, 2, 4]}},
        "data": {
            "train": "data/unlabelled.jsonl",
            "test": "data/test.jsonl",
            "columns": {"text": "review", "label": "sentiment"},
        },
    },
    "rlhf": {
        "name": "reward-model",
        "stage": "reward",
        "model": {"path": "Qwen/Qwen2.5-0.5B-Instruct"},
        "data": {"train": "data/prefs.jsonl", "split": {"test": 0.1}},
    },
}


def starter_recipe(kind: str, model: type[BaseModel]) -> str:
    """The commented YAML starter for `kind`."""
    values = {"kind": kind, **EXAMPLES.get(kind, {})}
    lines = [
        f"# llmtune {kind} recipe: {_doc(model)}",
        f"# Validate with `llmtune validate FILE`; every key is documented by `llmtune schema {kind}`.",
        "# extends: base.yaml   # optional: deep-merge another recipe under this one",
        "",
    ]
    lines += _render(model, values, indent=0)
    return "\n".join(lines) + "\n"


def _doc(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().splitlines()[0]


def _render(model: type[BaseModel], values: dict[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for name, field in model.model_fields.items():
        for line in (field.description or "").splitlines():
            lines.append(f"{pad}# {line.strip()}")
        if name in values:
            value = values[name]
        elif field.is_required():
            continue
        else:
            value = field.get_default(call_default_factory=True)
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json")
        sub = _unwrap(field.annotation)
        if isinstance(sub, type) and issubclass(sub, BaseModel) and isinstance(value, dict):
            lines.append(f"{pad}{name}:")
            lines += _render(sub, value, indent + 1)
        elif isinstance(value, dict) and value:
            block = yaml.safe_dump({name: value}, sort_keys=False, default_flow_style=False)
            lines += [pad + line for line in block.rstrip().splitlines()]
        else:
            dumped = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
            dumped = dumped.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{pad}{name}: {dumped}")
        if indent == 0:
            lines.append("")
    return lines
