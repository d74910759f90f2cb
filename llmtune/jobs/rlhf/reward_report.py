"""What the reward stage writes after training: predictions.jsonl (every held-out pair with its
two scores), the pairwise accuracy before/after at the top of eval.json, and report.md (the
accuracy table, how rows became pairs, how ties were used, a few held-out pairs with scores)."""

from __future__ import annotations

import json
from typing import Any

from llmtune.console import markdown_table, say, table
from llmtune.jobs.rlhf.common import agreement_lines
from llmtune.recipes.rlhf import RlhfRecipe
from llmtune.runs.job import Outcome, warnings_markdown
from llmtune.runs.rundir import RunDir

SAMPLES = 5  # held-out pairs shown in report.md
SHOWN_CHARS = 80  # of each text in the report's sample table
ROWS = ("pairwise_accuracy", "pair_gap", "tie_gap", "mean_reward_chosen", "mean_reward_rejected")
ACCURACY_NOTE = (
    "Pairwise accuracy is the share of held-out pairs whose chosen response the reward model "
    "scores above the rejected one (an equal score counts as half a pair); 0.5 is chance. "
    "pair_gap is the mean score of chosen minus rejected; tie_gap the mean distance between the "
    "scores of two responses ranked equal."
)
PAIRS_NOTE = (
    "A ranking such as `C > B = D > A` becomes every strictly ordered pair (C>B, C>D, C>A, B>A, "
    "D>A); responses ranked equal (B = D) become a tied pair, which is never trained on. Rows with "
    "an empty ranking are not ranked yet and are skipped."
)


def write_predictions(run_dir: RunDir, scored: Any) -> None:
    """predictions.jsonl: each held-out pair (then each tied pair) with both scores."""
    lines = []
    for pair, chosen, rejected in zip(scored.pairs, scored.chosen, scored.rejected):
        record = {
            "id": pair.where,
            "prompt": pair.prompt,
            "chosen": pair.first,
            "rejected": pair.second,
            "distance": pair.distance,
            "reward_chosen": chosen,
            "reward_rejected": rejected,
            "correct": chosen > rejected,
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    for pair, (first, second) in zip(scored.ties, scored.tie_scores):
        record = {
            "id": pair.where,
            "prompt": pair.prompt,
            "tied": [pair.first, pair.second],
            "rewards": [first, second],
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    run_dir.write_text("predictions.jsonl", "".join(lines))


def write_report(recipe: RlhfRecipe, run_dir: RunDir, outcome: Outcome, scored: Any) -> None:
    """Print the before/after table and write report.md."""
    from llmtune.runs.plots import training_curves

    plan = outcome.plan
    rows = before_after(outcome)
    table("held-out pairs (test split)", ["metric", "before training", "after training"], rows)
    ties = ties_sentence(outcome)
    say(ties)
    lines = [
        f"# {recipe.name}: rlhf reward model ({recipe.method.type})",
        "",
        f"- model: `{plan.model}`",
        f"- trainable parameters: {plan.trainable_params:,} of {plan.total_params:,} "
        f"({100 * plan.trainable_share:.2f}%)",
        f"- margin: {recipe.margin}; several annotators per row combined by data.aggregate: {recipe.data.aggregate}",
        f"- steps: {outcome.steps}, training time: {outcome.train_seconds:.2f} s on {plan.device}",
        "",
        *warnings_markdown(outcome),
        "## Held-out pairs (test split)",
        "",
        markdown_table(["metric", "before training", "after training"], rows),
        "",
        ACCURACY_NOTE,
        "",
        "## People's own agreement",
        "",
        *agreement_lines(
            plan.details.get("agreement"), (outcome.test or {}).get("pairwise_accuracy"), "pairwise accuracy"
        ),
        "## Rows and pairs",
        "",
        markdown_table(["split", "rows", *COUNT_COLUMNS], count_rows(plan.details, plan.rows)),
        "",
        PAIRS_NOTE,
        "",
        "## Ties",
        "",
        ties,
        "",
        "## Sample held-out pairs (after training)",
        "",
        markdown_table(
            ["row", "prompt", "chosen", "reward", "rejected", "reward", "right?"], sample_rows(scored)
        ),
    ]
    curves = training_curves(run_dir.path, scores=("eval_accuracy", "eval_margin"))
    run_dir.write_text("report.md", "\n".join(lines) + curves)


COUNT_COLUMNS = ["rankings", "pair rows", "pairs", "tied pairs", "unranked", "all tied", "skipped"]


def count_rows(details: dict[str, Any], split_rows: dict[str, int]) -> list[list[Any]]:
    """The report's table of rows -> pairs per split, from the plan's counts."""
    keys = ("rankings", "pair_rows", "pairs", "tied_pairs", "unranked", "all_tied", "skipped")
    return [[name, split_rows.get(name, 0), *[details[k][name] for k in keys]] for name in details["pairs"]]


def before_after(outcome: Outcome) -> list[list[Any]]:
    before, after = outcome.test_before or {}, outcome.test or {}
    return [[name, _shown(before.get(name)), _shown(after.get(name))] for name in ROWS]


def ties_sentence(outcome: Outcome) -> str:
    """How ties were used, and what their measured gap means, in one paragraph."""
    details, after, before = outcome.plan.details, outcome.test or {}, outcome.test_before or {}
    train, test = details["tied_pairs"].get("train", 0), details["tied_pairs"].get("test", 0)
    if after.get("tie_gap") is not None and after["tie_gap"] < abs(after["pair_gap"]) / 2:
        meaning = (
            "The tie gap is well below the pair gap: the model scores responses people found equally "
            "good close together, and keeps its distances for real preferences."
        )
    else:
        meaning = (
            "The tie gap is not well below the pair gap: the model separates responses people found "
            "equally good almost as much as preferred from rejected ones (more pairs or steps may help)."
        )
    used = f"Ties were never trained on ({train} tied pairs in train left out; {test} in test)."
    if after.get("tie_gap") is None:
        return used + " The test split has no tied pairs, so the tie gap was not measured."
    return (
        f"{used} On the test split the model scores two tied responses {_num(after['tie_gap'])} apart on "
        f"average (before training: {_num(before.get('tie_gap'))}), against a gap of "
        f"{_num(after['pair_gap'])} between chosen and rejected ({_num(before.get('pair_gap'))} "
        f"before). {meaning}"
    )


def sample_rows(scored: Any) -> list[list[Any]]:
    """The first pair of each of the first SAMPLES held-out rows, with both scores."""
    rows, seen = [], set()
    for pair, chosen, rejected in zip(scored.pairs, scored.chosen, scored.rejected):
        if pair.where in seen:
            continue
        seen.add(pair.where)
        rows.append(
            [
                pair.where,
                _cut(pair.prompt),
                _cut(pair.first),
                round(chosen, 4),
                _cut(pair.second),
                round(rejected, 4),
                "yes" if chosen > rejected else "no",
            ]
        )
        if len(rows) == SAMPLES:
            break
    return rows


def _cut(text: str) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= SHOWN_CHARS else flat[: SHOWN_CHARS - 1] + "…"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}".replace("-0.000", "0.000")


def _shown(value: Any) -> Any:
    return "-" if value is None else round(value, 4)
