"""What prompt-eval shows and writes: the terminal table, results.json, predictions.jsonl,
report.md with confusion matrices and slice tables, a bar chart, and the verdict of the quality
gate."""

from __future__ import annotations

import json
from typing import Any

from llmtune.console import markdown_table, say, table
from llmtune.jobs.prompt_eval.noise import (
    COMPARISON_COLUMNS,
    comparison_rows,
    generation_markdown,
    statistics_markdown,
    with_interval,
)
from llmtune.metrics import confusion_markdown
from llmtune.outputs import atomic_write_text
from llmtune.recipes.prompt_eval import PromptEvalRecipe
from llmtune.runs.plots import save_figure
from llmtune.runs.rundir import RunDir
from llmtune.slices import Gate, gate_failures, gates_summary, slices_markdown

CHART = "chart.png"


def best_pair(pairs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The pair with the highest `metric` (the first such pair in recipe order on a tie; a metric
    that could not be measured, e.g. no judge reply parsed, ranks last)."""
    return max(pairs, key=lambda p: -1e300 if p["metrics"][metric] is None else p["metrics"][metric])


def grid(recipe: PromptEvalRecipe, pairs: list[dict[str, Any]], metric: str) -> list[list[Any]]:
    """Rows = prompts, columns = models, each value with its interval, the best cell marked '*'."""
    best = best_pair(pairs, metric)
    cells = {(p["prompt"], p["model"]): p for p in pairs}
    rows = []
    for prompt, spec in recipe.prompts.items():
        row: list[Any] = [f"{prompt} ({spec.shots}-shot)"]
        for model in recipe.models:
            pair = cells[(prompt, model)]
            value = with_interval(pair["metrics"][metric], pair.get("intervals", {}).get(metric))
            if "invalid_rate" in pair["metrics"] and pair["metrics"]["invalid_rate"]:
                value += f" ({100 * pair['metrics']['invalid_rate']:.0f}% invalid)"
            row.append(value + (" *" if pair is best else ""))
        rows.append(row)
    return rows


def print_table(
    recipe: PromptEvalRecipe, pairs: list[dict[str, Any]], comparisons: list[dict[str, Any]]
) -> None:
    """The comparison on stderr (rich on a terminal, plain text elsewhere): the headline metric
    with intervals, then the paired tests on it."""
    metric = recipe.metrics[0]
    level = f"{100 * recipe.statistics.confidence:g}%"
    table(
        f"{metric} [{level} interval] by prompt (rows) and model (columns); * = best",
        ["prompt", *recipe.models],
        grid(recipe, pairs, metric),
    )
    rows = comparison_rows(comparisons, [metric])
    if rows:
        table(
            f"{metric}: paired differences", COMPARISON_COLUMNS, [[*r[:-1], r[-1].strip("*")] for r in rows]
        )
    best = best_pair(pairs, metric)
    say(f"best: {best['model']} x {best['prompt']} ({metric} {with_interval(best['metrics'][metric], None)})")


def evaluate_gate(pairs: list[dict[str, Any]], gates: list[Gate], when: str) -> dict[str, Any]:
    """Which pairs fall below the thresholds: the best pair per gate (best) or every pair (any)."""
    candidates = {f"pair {p['model']} x {p['prompt']}": (p["metrics"], p.get("slices")) for p in pairs}
    return gates_summary(gates, gate_failures(gates, candidates, when), when)


def write_outputs(
    run_dir: RunDir,
    recipe: PromptEvalRecipe,
    pairs: list[dict[str, Any]],
    predictions: list[dict[str, Any]],
    heads: dict[str, str],
    labels: list[str] | None,
    n_rows: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """results.json, predictions.jsonl, chart.png and report.md; returns results.json's content.
    `extra`: statistics, comparisons, and for free text the signatures and the judge."""
    metric = recipe.metrics[0]
    best = best_pair(pairs, metric)
    results = {
        "task": recipe.task,
        "labels": labels,
        "rows": n_rows,
        "metric": metric,
        "models": {
            name: {"source": ref.describe(), "head": heads[name]} for name, ref in recipe.models.items()
        },
        "prompts": {
            name: {"shots": s.shots, "selection": s.selection if s.shots else None, "chat": s.chat}
            for name, s in recipe.prompts.items()
        },
        "pairs": pairs,
        "best": {"model": best["model"], "prompt": best["prompt"], metric: best["metrics"][metric]},
        **extra,
    }
    run_dir.write_json("results.json", results)
    lines = "".join(json.dumps(p, ensure_ascii=False, default=float) + "\n" for p in predictions)
    atomic_write_text(run_dir.path / "predictions.jsonl", lines)
    chart = write_chart(run_dir, recipe, pairs, metric, chance_line(recipe, predictions, labels, metric))
    examples: dict[str, str] = {}
    for p in predictions:  # the first row's prompt, per prompt (chat prompts: per model)
        chat = recipe.prompts[p["prompt"]].chat
        examples.setdefault(f"{p['prompt']} ({p['model']})" if chat else p["prompt"], p["prompt_text"])
    run_dir.write_text("report.md", report(recipe, results, chart, examples))
    headline = [
        {
            "model": p["model"],
            "prompt": p["prompt"],
            **{m: _rounded(p["metrics"][m]) for m in recipe.metrics},
            **({"slices": _slice_headline(p["slices"])} if "slices" in p else {}),
        }
        for p in pairs
    ]
    return {
        **results,
        "summary": {"rows": n_rows, "metric": metric, "best": results["best"], "pairs": headline},
    }


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _slice_headline(slices: dict[str, Any]) -> dict[str, Any]:
    """Per slice column: the worst slice and the gap per metric (the full table is in results.json)."""
    return {column: {"worst": s["worst"], "gap": s["gap"]} for column, s in slices.items()}


def chance_line(
    recipe: PromptEvalRecipe, predictions: list[dict[str, Any]], labels: list[str] | None, metric: str
) -> tuple[float, str] | None:
    """Classification: `metric` of answering the most frequent gold label for every row (what a
    model that learnt nothing but the class balance scores), and its caption; else None."""
    if labels is None or metric == "invalid_rate":
        return None
    from collections import Counter

    from llmtune.jobs.prompt_eval.scoring import pair_metrics

    first = (predictions[0]["model"], predictions[0]["prompt"])
    gold = [p["gold"] for p in predictions if (p["model"], p["prompt"]) == first]
    majority = Counter(gold).most_common(1)[0][0]
    value = pair_metrics(gold, [majority] * len(gold), labels, "choices")[metric]
    return float(value), f"chance: always {majority!r} ({value:.2f})"


def write_chart(
    run_dir: RunDir,
    recipe: PromptEvalRecipe,
    pairs: list[dict[str, Any]],
    metric: str,
    chance: tuple[float, str] | None = None,
) -> str | None:
    """A grouped bar chart of `metric` with its intervals as error bars: one group per prompt, one
    bar per model; a dashed line at the chance level (classification)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the report still has every number; the chart is a convenience
        return None
    cells = {(p["prompt"], p["model"]): p for p in pairs}
    prompts, models = list(recipe.prompts), list(recipe.models)
    width = 0.8 / len(models)
    top = recipe.judge.scale[1] if metric == "judge_score" and recipe.judge else 1.0
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(prompts) * max(1, len(models) / 2)), 3.6))
    for j, model in enumerate(models):
        xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(prompts))]
        values = [cells[(p, model)]["metrics"][metric] or 0.0 for p in prompts]
        spans = [cells[(p, model)].get("intervals", {}).get(metric) for p in prompts]
        errors = [
            [max(v - s[0], 0) if s else 0 for v, s in zip(values, spans)],
            [max(s[1] - v, 0) if s else 0 for v, s in zip(values, spans)],
        ]
        bars = ax.bar(xs, values, width, label=model, yerr=errors, capsize=3, error_kw={"linewidth": 0.8})
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8, label_type="center")
    if chance is not None:
        ax.axhline(chance[0], color="grey", linestyle="--", linewidth=1)
        ax.text(-0.45, chance[0], chance[1], fontsize=7, ha="left", va="bottom", color="grey")
    ax.set_xticks(range(len(prompts)), prompts)
    ax.set_ylim(0, top * 1.18)
    ax.set_ylabel(metric)
    level = f"{100 * recipe.statistics.confidence:g}%"
    ax.set_title(f"{recipe.name}: {metric} per prompt and model\n(error bars: {level} intervals)", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", ncols=len(models), frameon=False)
    save_figure(fig, run_dir.path / CHART)
    return CHART


def report(
    recipe: PromptEvalRecipe, results: dict[str, Any], chart: str | None, examples: dict[str, str]
) -> str:
    """report.md: the table, every pair's metrics, confusion matrices and one prompt per prompt."""
    metric = results["metric"]
    pairs = results["pairs"]
    lines = [
        f"# {recipe.name}: prompt-eval",
        "",
        f"- rows scored: {results['rows']} (the same rows for every pair)",
        f"- labels: {', '.join(results['labels']) if results['labels'] else 'free text'}",
        "- models: "
        + "; ".join(f"`{n}` = {m['source']} ({m['head']})" for n, m in results["models"].items()),
        f"- best: **{results['best']['model']} x {results['best']['prompt']}** "
        f"({metric} {_cell(results['best'][metric])})",
        "",
        f"## {metric} (rows: prompts, columns: models; * = best)",
        "",
        markdown_table(["prompt", *recipe.models], grid(recipe, pairs, metric)),
    ]
    if chart:
        lines += [f"![{metric} per prompt and model]({chart})", ""]
    lines += statistics_markdown(results, recipe.metrics)
    shown = [m for m in pairs[0]["metrics"] if isinstance(pairs[0]["metrics"][m], float | int) and m != "n"]
    lines += [
        "## All pairs",
        "",
        markdown_table(
            ["model", "prompt", "scoring", *shown, "rows/s"],
            [
                [
                    p["model"],
                    p["prompt"],
                    p["scoring"],
                    *[_cell(p["metrics"][m]) for m in shown],
                    f"{p['rows_per_second'] or 0:.1f}",
                ]
                for p in pairs
            ],
        ),
    ]
    if results["task"] == "free_text":
        lines += generation_markdown(results)
    else:
        lines += [
            "Precision, recall and F1 are macro averages. Sequence-classification models are scored by "
            "their head's probabilities (the prompt only shapes the text they read); causal LMs by "
            f"`{recipe.scoring}`. A bare encoder (no trained head) gets a new, untrained head: chance level.",
            "",
        ]
    if examples:
        lines += ["## What the model reads (first row)", ""]
        for name, text in examples.items():
            lines += [f"### {name}", "", "````text", text, "````", ""]
    if recipe.slices:
        lines += ["## Slices", "", "Every metric on the rows of each value alone, per pair.", ""]
        for p in pairs:
            lines += [f"### {p['model']} x {p['prompt']}", "", slices_markdown(p["slices"], level=4)]
    if results["labels"]:
        lines += ["## Confusion matrices", ""]
        for p in pairs:
            lines += [f"### {p['model']} x {p['prompt']}", "", confusion_markdown(p["metrics"])]
    return "\n".join(lines) + "\n"
