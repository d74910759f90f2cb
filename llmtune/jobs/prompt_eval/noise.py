"""What report.md and the terminal say about noise: each metric with its interval, every paired
comparison with its test and whether the difference is larger than the noise, the one-class
warnings, sacrebleu's signatures and the judge's agreement with people."""

from __future__ import annotations

from typing import Any

from llmtune.console import markdown_table

SIGNIFICANT = "yes"


def with_interval(value: float | None, span: list[float] | None) -> str:
    """`0.4667 [0.2988, 0.6425]` (a metric and its interval)."""
    if value is None:
        return "-"
    return f"{value:.4f}" + (f" [{span[0]:.4f}, {span[1]:.4f}]" if span else "")


def metrics_table(pairs: list[dict[str, Any]], metrics: list[str]) -> str:
    """Every pair's shown metrics with their intervals (Markdown)."""
    rows = [
        [
            p["model"],
            p["prompt"],
            *[with_interval(p["metrics"].get(m), p["intervals"].get(m)) for m in metrics],
        ]
        for p in pairs
    ]
    return markdown_table(["model", "prompt", *metrics], rows)


def comparison_rows(comparisons: list[dict[str, Any]], metrics: list[str] | None = None) -> list[list[Any]]:
    """One row per comparison: a, b, metric, difference, its interval (bootstrap), test, p, marked."""
    out = []
    for c in comparisons:
        if metrics is not None and c["metric"] not in metrics:
            continue
        span = c.get("difference_interval")
        p = c["p_value"]
        out.append(
            [
                c["a"],
                c["b"],
                c["metric"],
                f"{c['difference']:+.4f}",
                f"[{span[0]:+.4f}, {span[1]:+.4f}]" if span else "-",
                c["test"] + (f" ({c['only_a']} vs {c['only_b']} rows)" if "only_a" in c else ""),
                _p(p),
                f"**{SIGNIFICANT}**" if c["significant"] else "no",
            ]
        )
    return out


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


COMPARISON_COLUMNS = ["a", "b", "metric", "a - b", "interval of a - b", "test", "p", "larger than noise"]


def statistics_markdown(results: dict[str, Any], metrics: list[str]) -> list[str]:
    """report.md's sections on intervals, comparisons and warnings."""
    stats = results["statistics"]
    level = f"{100 * stats['confidence']:g}%"
    lines = [
        f"## Every metric with its {level} interval",
        "",
        metrics_table(results["pairs"], metrics),
        f"Intervals: Wilson for proportions (accuracy, exact_match, contains, pass rates, invalid_rate), "
        f"percentile bootstrap over rows for the rest ({stats['resamples']} resamples, seed {stats['seed']}).",
        "",
        "## Differences between prompts and models (paired, on the same rows)",
        "",
    ]
    comparisons = results["comparisons"]
    if comparisons:
        lines += [
            markdown_table(COMPARISON_COLUMNS, comparison_rows(comparisons)),
            f"A difference is larger than the noise when p < {1 - stats['confidence']:.2g}: McNemar's exact "
            "test for proportions (only the rows where exactly one of the two is right count), a paired "
            "bootstrap for the rest. No correction for the number of comparisons.",
            "",
        ]
    else:
        lines += ["One pair only: nothing to compare.", ""]
    warnings = [w for p in results["pairs"] for w in p.get("warnings", [])]
    if warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in warnings], ""]
    return lines


def generation_markdown(results: dict[str, Any]) -> list[str]:
    """report.md's section on how free text was scored: signatures and the judge."""
    lines = ["## How the text was scored", ""]
    for name, signature in results.get("signatures", {}).items():
        lines.append(f"- {name}: `{signature}`")
    lines += [
        "- chrf and bleu are sacrebleu's corpus scores / 100; rouge_l is the mean ROUGE-L F-measure; "
        "exact_match and contains compare normalised text (first line, lower case).",
        "",
    ]
    judge = results.get("judge")
    if judge:
        lines += [
            f"Judge: {judge['model']}, scale {judge['scale'][0]}-{judge['scale'][1]}, temperature 0; "
            f"{judge['unparseable']} of {judge['replies']} replies had no score in the scale (left out of "
            "judge_score, never guessed). Pairwise judging and its position bias are not measured.",
            "",
        ]
        agreement = judge.get("agreement")
        if agreement:
            parts = [f"{agreement['compared']} of {agreement['rows']} human-scored texts compared"]
            for key in ("spearman", "cohen_kappa", "cohen_kappa_quadratic"):
                if agreement.get(key) is not None:
                    parts.append(f"{key} {agreement[key]:.4f}")
            lines += ["Agreement with people: " + ", ".join(parts) + ".", ""]
    return lines
