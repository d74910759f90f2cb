"""`llmtune init KIND`: a commented starter recipe generated from the pydantic models.

The comments are the fields' docstrings and the values are the defaults, overlaid with a few
realistic example values per kind, so the starter can never drift from what validation accepts.
"""

from __future__ import annotations

import typing
from typing import Any

import yaml
from pydantic import BaseModel

from llmtune.recipes.annotations import unwrap_optional

EXAMPLES: dict[str, dict[str, Any]] = {
    "finetune": {
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
            "epochs": "auto",
            "batch_size": 16,
            "learning_rate": "auto",
            "early_stopping": {"patience": 3, "metric": "eval_loss"},
        },
    },
    "bulk-infer": {
        "model": {"path": "runs/quickstart/model"},
        "input": {"path": "inbox/*.jsonl", "id_column": "id", "columns": {"text": "review"}},
        "template": "{{ text }}",
        "task": "classify",
        "labels": ["negative", "positive"],
        "output": {"path": "out/labels.jsonl", "errors": "out/labels.errors.jsonl"},
    },
    "prompt-eval": {
        # a generation eval that runs offline as it is: tiny scratch models (random weights) stand
        # in for real ones; put e.g. {path: Qwen/Qwen2.5-0.5B-Instruct} in their place
        "models": {
            "small": {
                "scratch": {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 2}
            },
            "wider": {
                "scratch": {"architecture": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4}
            },
        },
        "data": {
            "test": "data/translation/test.jsonl",
            "columns": {"text": "source", "label": "reference", "completion": "candidate"},
        },
        "task": "free_text",
        "scoring": "generate",
        "max_new_tokens": 24,
        "prompts": {
            "plain": {"template": "{{ text }}\n{{ language_name }}:"},
            "instructed": {
                "template": "Translate from English into {{ language_name }}.\nEnglish: {{ text }}\n"
                "{{ language_name }}:"
            },
        },
        "metrics": ["chrf", "bleu", "rouge_l", "exact_match", "pass_rate", "judge_score"],
        "assertions": [
            {"type": "max_length", "value": 120},
            {"type": "not_contains", "value": "English:", "name": "no_echo"},
            {"type": "regex", "value": "\\pL", "name": "has_letters"},
        ],
        "judge": {
            "model": {
                "scratch": {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 2}
            },
            "rubric": "5: the meaning is fully kept and reads naturally; 1: the meaning is lost.",
            "scale": [1, 5],
        },
        "slices": ["language"],
        "fail_under": {"chrf@language": 0.4, "pass_rate:no_echo": 0.95},
    },
    "distill": {
        "task": "classification",
        "teacher": {"path": "runs/sentiment-full/model"},
        "student": {"from_teacher": {"layers": [0, 2, 4]}, "trim_vocab": True},
        "strategy": "soft_labels",
        "temperature": 2.0,
        "alpha": 0.5,
        "data": {
            "train": ["data/train.jsonl", "data/unlabelled.jsonl"],
            "test": "data/test.jsonl",
            "columns": {"text": "review", "label": "sentiment"},
        },
    },
    "rlhf": {
        "name": "reward-model",  # the policy stage's starter reads runs/reward-model/model
        "stage": "reward",
        "model": {"path": "sentence-transformers/all-MiniLM-L6-v2"},
        "data": {"train": "data/rankings.jsonl", "test": "data/rankings_test.jsonl", "max_length": 256},
    },
}

# `llmtune init rlhf --stage STAGE`: each stage's starter shows the keys that stage reads
_COMMON = ("name", "seed", "output", "stage", "model", "data")
_TRAINED = ("method", "training", "distributed")
RLHF_STAGES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "collect": (
        ("generation", "engine", "vllm"),
        {
            "name": "collect",
            "model": {"path": "runs/sft/model"},
            "data": {"train": "data/prompts.jsonl", "columns": {"prompt": "question"}},
            "generation": {"num_generations": 4, "max_new_tokens": 64, "temperature": 1.0},
        },
    ),
    "reward": (("margin", *_TRAINED), EXAMPLES["rlhf"]),
    "policy": (
        ("reward_model", "reward_weight", "rewards", "algorithm", "beta", "generation", *_TRAINED),
        {
            "name": "policy",
            "model": {"path": "runs/sft/model"},
            "method": {"type": "lora", "r": 16, "alpha": 32},
            "data": {"train": "data/prompts.jsonl", "test": "data/prompts_test.jsonl"},
            "reward_model": {"path": "runs/reward-model/model"},
            "rewards": [
                {"type": "length", "target": 400, "weight": 0.5},
                {"type": "regex", "pattern": "(?i)as an ai", "must_match": False, "weight": 1.0},
            ],
            "algorithm": "grpo",
            "beta": 0.05,
            "generation": {"num_generations": 4, "max_new_tokens": 64, "temperature": 1.0},
        },
    ),
    "dpo": (
        ("reward_model", "beta", "generation", *_TRAINED),
        {
            "name": "dpo",
            "model": {"path": "runs/sft/model"},
            "data": {"train": "data/rankings.jsonl", "test": "data/rankings_test.jsonl"},
            "reward_model": {"path": "runs/reward-model/model"},
            "beta": 0.1,
        },
    ),
    "kto": (
        ("reward_model", "beta", "generation", *_TRAINED),
        {
            "name": "kto",
            "model": {"path": "runs/sft/model"},
            "data": {"train": "data/graded.jsonl", "split": {"test": 0.1}},
            "beta": 0.1,
        },
    ),
}


# optional sections that are off by default, shown as a commented example under their `null`, so
# that every option a recipe may turn on is in the starter (each example validates: a test checks)
COMMENTED: dict[str, dict[str, Any]] = {
    "rlhf": {"reward_model": {"path": "runs/reward-model/model"}},
    "prompt-eval": {"answer_pattern": "Answer: (.*)"},
    "finetune": {
        "replay": {"path": "data/general.jsonl", "ratio": 0.2},
        "sweep": {
            "strategy": "tpe",
            "metric": "eval_f1",
            "trials": 12,
            "timeout": 3600,
            "pruning": True,
            "params": {
                "training.learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
                "method.r": {"low": 4, "high": 16},
            },
        },
    },
}
# a field whose example shows another form of its value (a list of weighted sources)
ALTERNATIVES: dict[str, dict[str, Any]] = {
    # classification: the labels scored by their log-likelihood, with a few-shot prompt
    "prompt-eval": {
        "task": "classification",
        "labels": ["negative", "positive"],
        "scoring": "choices",
        # a real instruct model (downloaded once) in place of the scratch ones
        "models": {"small": {"path": "Qwen/Qwen2.5-0.5B-Instruct"}},
    },
    "finetune": {
        "train": [
            {"path": "data/task_a.jsonl", "weight": 0.7},
            {"path": "data/task_b.jsonl", "weight": 0.3, "template": "{{ question }}"},
        ],
    },
}


# `llmtune init KIND` without --full: the keys a newcomer edits (None: the whole section)
SHORT: dict[str, dict[str, Any]] = {
    "finetune": {
        "kind": None,
        "task": None,
        "model": {"path": None},
        "labels": None,
        "method": {"type": None},
        "data": {"train": None, "test": None, "split": None, "columns": None},
        "training": {"epochs": None, "batch_size": None, "learning_rate": None},
    },
}


def schema_file(kind: str) -> str:
    """The JSON Schema file `llmtune init` writes next to a starter, which its first line names."""
    return f"llmtune-{kind}.schema.json"


def starter_for(
    kind: str, stage: str | None = None, *, full: bool = False, example: dict[str, Any] | None = None
) -> str:
    """`llmtune init KIND [--stage STAGE] [--full]`: the short starter where there is one, else
    every key; `example` replaces the kind's example values (`--from DATA`). An unknown kind or
    stage is BadInput."""
    from llmtune.errors import BadInput
    from llmtune.recipes import RECIPE_KINDS

    if kind not in RECIPE_KINDS:
        raise BadInput(f"unknown kind {kind!r}; expected one of: {', '.join(RECIPE_KINDS)}")
    if stage is not None and kind != "rlhf":
        raise BadInput(f"--stage is for rlhf recipes, not {kind}")
    if stage is not None and stage not in RLHF_STAGES:
        raise BadInput(f"unknown rlhf stage {stage!r}; expected one of: {', '.join(RLHF_STAGES)}")
    short = not full and kind in SHORT
    return starter_recipe(kind, RECIPE_KINDS[kind], stage, short=short, example=example)


# what to do with a run once it has finished: the verbs that use it, with an example each
_USE_A_RUN = [
    "# After the run (runs/NAME: output.dir with the recipe's name):",
    "#   llmtune runs                            # the table of your runs: status, test metric, size",
    "#   llmtune runs show runs/NAME             # one run: summary, plan, metrics",
    "#   llmtune runs compare runs/A runs/B      # metrics side by side, differences beyond the noise",
    '#   llmtune predict runs/NAME "some text"   # label / score / generation; stdin and --input too',
    "#   llmtune chat runs/NAME                  # causal LMs with a chat template: talk to it",
    "#   llmtune runs clean --yes                # delete checkpoints completed runs kept",
    "#   llmtune export runs/NAME --format onnx --quantize int8 --output deploy/",
    "#                                           # deploy (hf, onnx, gguf), checked against the run",
]
AFTER_THE_RUN = {
    "finetune": _USE_A_RUN,
    "distill": _USE_A_RUN,
    "rlhf": _USE_A_RUN,
    "prompt-eval": ["# After the run: llmtune runs (the table), llmtune runs show runs/NAME"],
}


def starter_recipe(
    kind: str,
    model: type[BaseModel],
    stage: str | None = None,
    *,
    short: bool = False,
    example: dict[str, Any] | None = None,
) -> str:
    """The commented YAML starter for `kind`; for rlhf, `stage` gives one stage's starter with
    only the keys that stage reads (without it, every key, with the reward stage's values);
    `short`, only the keys of SHORT[kind]."""
    values = {"kind": kind, **(EXAMPLES.get(kind, {}) if example is None else example)}
    only: dict[str, Any] | None = SHORT[kind] if short else None
    if stage is not None:
        keys, stage_example = RLHF_STAGES[stage]
        values = {"kind": kind, **stage_example, "stage": stage}
        only = dict.fromkeys({"kind", *_COMMON, *keys})
    lines = [
        f"# yaml-language-server: $schema={schema_file(kind)}",
        f"# llmtune {kind} recipe: {_doc(model)}",
        f"# Validate with `llmtune validate FILE`; every key is documented by `llmtune schema {kind}`.",
        "# extends: base.yaml   # optional: deep-merge another recipe under this one (its relative",
        "#                      # paths stay relative to it)",
        "",
    ]
    if short:
        lines[2:5] = [
            f"# The keys you edit first; `llmtune init {kind} FILE --full` writes every key, and",
            f"# `llmtune schema {kind}` documents them. The run is named after this file: runs/<file stem>.",
            "# Then: llmtune validate FILE; llmtune finetune FILE --dry-run; llmtune finetune FILE",
        ]
    lines[-1:-1] = AFTER_THE_RUN.get(kind, [])
    if kind == "rlhf":
        lines[3:3] = [
            "# Stages, in the order of the loop: collect -> (people rank: llmtune rank FILE) -> reward ->",
            "# policy, or dpo / kto. `llmtune init rlhf --stage STAGE` writes one stage's starter.",
        ]
    extras = ({}, {}) if short else (COMMENTED.get(kind, {}), ALTERNATIVES.get(kind, {}))
    lines += _render(model, values, indent=0, extras=extras, only=only)
    return "\n".join(lines) + "\n"


def _commented(name: str, value: Any, pad: str, lead: str) -> list[str]:
    """`name: value` as a commented-out YAML block, introduced by `lead` ("e.g.", "or")."""
    block = yaml.dump({name: value}, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100)
    return [f"{pad}# {lead}:", *[f"{pad}# {line}".rstrip() for line in block.splitlines()]]


def _doc(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().splitlines()[0]


Extras = tuple[dict[str, Any], dict[str, Any]]


def _render(
    model: type[BaseModel],
    values: dict[str, Any],
    indent: int,
    defaults: bool = True,
    extras: Extras = ({}, {}),
    only: dict[str, Any] | None = None,
) -> list[str]:
    """Each field of `model` as commented YAML: the example value when there is one, else (with
    `defaults`) the default, so that every key a user may set is shown where it goes. `extras`:
    commented examples of sections that are off by default, and other forms of a field's value."""
    pad = "  " * indent
    lines: list[str] = []
    commented, alternatives = extras
    for name, field in model.model_fields.items():
        if only is not None and name not in only:
            continue
        if name in values:
            value = values[name]
        elif field.is_required() or not defaults:
            continue
        else:
            value = field.get_default(call_default_factory=True)
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json")
        lines += [f"{pad}# {line.strip()}" for line in (field.description or "").splitlines()]
        if name in alternatives:
            lines += _commented(name, alternatives[name], pad, "or")
        annotation = unwrap_optional(field.annotation)
        if _is_section(annotation) and isinstance(value, dict):
            inner = only.get(name) if only is not None else None
            lines += [f"{pad}{name}:", *_render(annotation, value, indent + 1, defaults, extras, inner)]
        else:
            lines += _render_value(name, annotation, value, indent, defaults)
        if value is None and name in commented:
            lines += _commented(name, commented[name], pad, "e.g.")
        if indent == 0:
            lines.append("")
    return lines


def _render_value(name: str, annotation: Any, value: Any, indent: int, defaults: bool) -> list[str]:
    pad = "  " * indent
    if _is_section(annotation) and isinstance(value, dict):
        return [f"{pad}{name}:", *_render(annotation, value, indent + 1, defaults)]
    entry = _entry_section(annotation)
    if entry is not None and isinstance(value, dict) and value:
        # a dict of named sections (models:, prompts:): each entry commented with the keys it sets
        lines = [f"{pad}{name}:"]
        for key, item in value.items():
            lines.append(f"{pad}  {key}:")
            lines += _render(entry, item, indent + 2, defaults=False)
        return lines
    records = isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
    if (isinstance(value, dict) and value) or records or (isinstance(value, str) and "\n" in value):
        block = yaml.dump({name: value}, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
        block = block.removesuffix("...\n")  # the end marker after a `|+` block
        return [(pad + line).rstrip() for line in block.splitlines()]
    dumped = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    dumped = dumped.removesuffix("\n...").removesuffix("...").strip()
    return [f"{pad}{name}: {dumped}"]


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _entry_section(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is dict:
        entry = unwrap_optional(typing.get_args(annotation)[1])
        return entry if _is_section(entry) else None
    return None


class _Dumper(yaml.SafeDumper):
    """Writes text with line breaks (templates) as a literal block, as a person would."""


def _literal_text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _literal_text)
