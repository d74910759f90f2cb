"""What a fine-tune kept and what it learnt per data source, measured with the run's own trainer:
the general rows of evaluation.retain before and after training (catastrophic forgetting), and
the loss on each source of a mixture. Shared by the finetune tasks: each hands in its trainer and
its encoded rows."""

from __future__ import annotations

import math
from typing import Any

from llmtune.data.mixture import SOURCE
from llmtune.data.readers import Rows, Splits
from llmtune.data.templates import Template
from llmtune.errors import BadInput

Metrics = dict[str, Any]
MAX_ROWS_PER_SOURCE = 256  # enough for a mean loss; a large source is not evaluated whole
KEPT = ("loss", "accuracy", "f1", "mean_token_accuracy")


def measure(trainer: Any, dataset: Any, *, perplexity: bool, prefix: str = "retain") -> Metrics:
    """The trainer's current model on `dataset`: loss (and perplexity for a language model), plus
    whatever the trainer computes of accuracy / f1 (classification) or token accuracy (TRL)."""
    raw = trainer.evaluate(dataset, metric_key_prefix=prefix)
    out: Metrics = {k: raw[f"{prefix}_{k}"] for k in KEPT if f"{prefix}_{k}" in raw}
    if perplexity and "loss" in out:
        out["perplexity"] = math.exp(min(out["loss"], 50.0))
    out["n"] = len(dataset)
    return out


def measured_split(splits: Splits) -> str:
    """Where per-source losses are measured: the first of test, validation, train that has rows
    of the sources (held-out rows carved from each source; given files carry no source)."""
    for name in ("test", "validation"):
        if any(SOURCE in row for row in getattr(splits, name).rows):
            return name
    return "train"


def source_metrics(
    trainer: Any, splits: Splits, split: str, dataset: Any, rows: list[dict[str, Any]], *, perplexity: bool
) -> dict[str, Metrics] | None:
    """splits.sources with the final model's metrics on each source's rows of `split` (`dataset`,
    aligned with `rows`; at most MAX_ROWS_PER_SOURCE each). None when the data is one source."""
    if not splits.sources:
        return None
    positions: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        positions.setdefault(row.get(SOURCE), []).append(i)
    out = {}
    for name, entry in splits.sources.items():
        chosen = positions.get(name, [])[:MAX_ROWS_PER_SOURCE]
        out[name] = dict(entry)
        if chosen and dataset is not None:
            subset = dataset.select(chosen)
            out[name] |= {
                "measured_on": split,
                "metrics": measure(trainer, subset, perplexity=perplexity, prefix="source"),
            }
    return out


def encode_retain(
    rows: Rows, template: Template | None, tokenizer: Any, labels: list[str], max_length: int
) -> Any:
    """Classification: the retain rows as the trainer reads them (None without rows). Every row
    needs a label of the run's label set: accuracy on general data is what forgetting is measured
    in, and a classifier's loss needs a label."""
    import datasets

    if not rows.rows:
        return None
    index = {name: i for i, name in enumerate(labels)}
    outside = [(w, r.get("label")) for r, w in zip(rows.rows, rows.where) if str(r.get("label")) not in index]
    if outside:
        where, label = outside[0]
        raise BadInput(
            f"retain row label {label!r} is not in the run's labels {labels} ({len(outside)} such row(s)); "
            "retain rows for a classifier need labels of the task",
            file=where,
            key="evaluation.retain",
        )
    texts = [
        template.render(r, where=w) if template else str(r["text"]) for r, w in zip(rows.rows, rows.where)
    ]
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict(
        {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": [index[str(r["label"])] for r in rows.rows],
        }
    )
