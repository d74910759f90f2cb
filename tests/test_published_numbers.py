"""Every figure in a BENCHMARKS.md table (and in docs/results.md's tables) that has a results
file is in that file: a number typed into the docs by hand, or left behind by a re-run, fails
here. A doc figure matches a number of the results file rounded to the doc's decimals (0.756
matches 0.7562); thousands separators and x / % / ** are ignored. Cheap: reads text only.

Tables without a results file yet (fine-tuning and bulk-inference benches: `make bench` writes
bench/results/finetune.md and bulk_infer.md; sweeps) are listed in UNSOURCED, so that a new
section must say which file it comes from."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

RESULTS = ROOT / "bench" / "results"
# (doc, section heading prefix, results file): each section's tables come from that file
SOURCES = [
    ("BENCHMARKS.md", "## Fine-tuning", "finetune.md"),
    ("BENCHMARKS.md", "## Bulk inference", "bulk_infer.md"),
    ("BENCHMARKS.md", "## Sweeps", "sweeps.md"),
    ("BENCHMARKS.md", "## Bulk-infer engines", "engines.md"),
    ("BENCHMARKS.md", "## Generation", "engines_generation.md"),
    ("BENCHMARKS.md", "## prompt-eval vs lm-evaluation-harness", "prompt_eval_lmeval.md"),
    ("BENCHMARKS.md", "## Distillation", "distill.md"),
    ("BENCHMARKS.md", "## CPU classification", "int8.md"),
    ("docs/results.md", "## Reward model", "reward.md"),
    ("docs/results.md", "## Regression", "regression.md"),
    ("docs/results.md", "## Quickstart", "quickstart.md"),
]
# (doc, section heading prefix) with no results file: none left; a new section names its file above
UNSOURCED: list[tuple[str, str]] = []
NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?(?![\w])")


def section(doc: str, heading: str) -> str:
    text = (ROOT / doc).read_text(encoding="utf-8")
    start = next(m.start() for m in re.finditer(r"^## .*$", text, re.M) if m.group().startswith(heading))
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def table_figures(text: str) -> list[str]:
    """The numbers in the table rows (lines starting with `|`; header and rule rows and each
    row's first cell, which names it, left out)."""
    lines = text.splitlines()
    figures = []
    for i, line in enumerate(lines):
        header = i + 1 < len(lines) and lines[i + 1].startswith("|---")
        if not line.startswith("|") or line.startswith("|---") or header:
            continue
        for cell in line.strip("|").split("|")[1:]:
            figures += [m.group() for m in NUMBER.finditer(cell.replace("**", ""))]
    return figures


def numbers(text: str) -> list[str]:
    return [m.group().replace(",", "") for m in NUMBER.finditer(text)]


def found(figure: str, candidates: list[str]) -> bool:
    """`figure` is one of `candidates`, rounded as the figure is (0.756 matches 0.7562, 4.3e-06
    matches 4.29e-06)."""
    figure = figure.replace(",", "")
    mantissa, _, exponent = figure.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    shown = (lambda x: f"{x:.{decimals}e}") if exponent else (lambda x: f"{x:.{decimals}f}")
    want = shown(float(figure))
    return any(shown(float(c)) == want for c in candidates)


@pytest.mark.parametrize(("doc", "heading", "results"), SOURCES, ids=[f"{d}:{r}" for d, _, r in SOURCES])
def test_every_table_figure_is_in_its_results_file(doc: str, heading: str, results: str) -> None:
    figures = table_figures(section(doc, heading))
    assert figures, f"{doc} {heading}: no table figures"
    raw = numbers((RESULTS / results).read_text(encoding="utf-8"))
    missing = [f for f in figures if not found(f, raw)]
    assert not missing, f"{doc} {heading}: not in bench/results/{results}: {missing}"


def test_every_benchmarks_section_is_sourced_or_listed() -> None:
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## .*$", text, re.M)
    known = [h for d, h, _ in SOURCES if d == "BENCHMARKS.md"] + [
        h for d, h in UNSOURCED if d == "BENCHMARKS.md"
    ]
    assert all(any(h.startswith(k) for k in known) for h in headings), headings


def test_the_check_catches_a_typed_in_figure() -> None:
    table = "| model | rows/s | accuracy |\n|---|---|---|\n| teacher | 10.4 | 0.850 |\n| student | 31.7 | 0.8125 |\n"
    assert table_figures(table) == ["10.4", "0.850", "31.7", "0.8125"]
    assert found("0.850", ["0.85"]) and found("31.7", ["31.66"]) and found("22,713,986", ["22713986"])
    assert found("4.3e-06", ["4.29e-06"]) and not found("0.974", ["0.9412", "0.5348"])
