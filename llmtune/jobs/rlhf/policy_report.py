"""What stage policy shows people: samples.jsonl (every held-out response scored before and after
training), eval.json's headline (mean_reward_before / mean_reward_after) and report.md (the mean
rewards before and after, and held-out prompts with a response of each model)."""

from __future__ import annotations

import json
from typing import Any

from llmtune.console import markdown_table, say, table
from llmtune.jobs.rlhf.scoring import Sampled
from llmtune.recipes.rlhf import RlhfRecipe
from llmtune.runs.job import Outcome, warnings_markdown
from llmtune.runs.rundir import RunDir

SHOWN_PROMPTS = 5
"""Held-out prompts shown with their responses before and after in report.md."""


def sample_rows(when: str, sampled: Sampled, components: dict[str, list[float]]) -> list[dict[str, Any]]:
    """One row per sampled response: phase (before/after), prompt, sample number, response, its
    total reward and each component's reward. `components` are in the order the responses were
    scored (prompt by prompt, sample by sample)."""
    rows, flat = [], 0
    for prompt, responses, rewards in zip(sampled.prompts, sampled.responses, sampled.rewards):
        for k, (response, reward) in enumerate(zip(responses, rewards)):
            parts = {name: values[flat] for name, values in components.items()}
            rows.append(
                {
                    "phase": when,
                    "prompt": prompt,
                    "sample": k,
                    "response": response,
                    "reward": reward,
                    "rewards": parts,
                }
            )
            flat += 1
    return rows


def reward_rows(outcome: Outcome, weights: dict[str, float]) -> list[list[Any]]:
    """[measure, weight, before, after, change] for the total, each component and the length."""
    before, after = outcome.test_before or {}, outcome.test or {}
    names = [("mean_reward", "total (weighted sum)", None)]
    names += [(name, name, weight) for name, weight in weights.items()]
    names += [("response_chars", "response length (characters)", None)]
    return [
        [
            label,
            "-" if weight is None else weight,
            before.get(key),
            after.get(key),
            _change(before, after, key),
        ]
        for key, label, weight in names
    ]


def _change(before: dict[str, Any], after: dict[str, Any], key: str) -> float | None:
    if isinstance(before.get(key), int | float) and isinstance(after.get(key), int | float):
        return after[key] - before[key]
    return None


def example_rows(samples: dict[str, list[dict[str, Any]]]) -> list[list[Any]]:
    """The first response to each of the first held-out prompts, before and after, with rewards."""
    first = {when: [r for r in rows if r["sample"] == 0][:SHOWN_PROMPTS] for when, rows in samples.items()}
    return [
        [
            _cell(b["prompt"][-80:]),
            _cell(b["response"]),
            round(b["reward"], 4),
            _cell(a["response"]),
            round(a["reward"], 4),
        ]
        for b, a in zip(first.get("before", []), first.get("after", []))
    ]


def diversity_lines(diversity: dict[str, Any]) -> list[str]:
    """report.md's section on the diversity of the held-out answers and the KL to the reference."""
    before, after, kl = diversity["before"], diversity["after"], diversity["kl_to_reference"]
    measures = [
        ("distinct answers", "distinct_answers"),
        ("distinct words (distinct-1)", "distinct_1"),
        ("distinct word pairs (distinct-2)", "distinct_2"),
        ("share of the most repeated answer", "most_repeated_share"),
        ("mean length (characters)", "mean_chars"),
    ]
    rows = [[label, before.get(key), after.get(key)] for label, key in measures]
    rows.append(
        ["most repeated answer", _cell(before["most_repeated"][:60]), _cell(after["most_repeated"][:60])]
    )
    logged = (
        f"TRL logged {kl['first_logged']:.4g} at the first logged step and {kl['last_logged']:.4g} at the last"
        if kl["last_logged"] is not None
        else "TRL logged none (beta 0 computes no KL)"
    )
    verdict = f"**Warning**: {diversity['warning']}" if diversity["warning"] else "Diversity held."
    return [
        "## Diversity of the held-out answers",
        "",
        f"{after['answers']} answers before and after. A policy that games its reward model often says "
        "one thing to everyone: its reward rises while its answers collapse.",
        "",
        markdown_table(["measure", "before training", "after training"], rows),
        f"KL to the reference (the starting policy): 0 before training; {logged}.",
        "",
        f"{verdict} The rule: {diversity['rule']}.",
        "",
    ]


def _cell(text: str) -> str:
    """Model text in a Markdown table cell as it reads: line breaks as <br>, `|` kept inside the
    cell, and an empty response said as such."""
    if not text.strip():
        return "*(empty)*"
    return text.replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def training_rewards(run_dir: RunDir) -> list[str]:
    """The mean training reward TRL logged at the first and last logged steps (the policy's own
    samples of the training prompts, as it learned)."""
    log = run_dir.path / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []
    logged = [(r["step"], r["reward"]) for r in records if isinstance(r.get("reward"), int | float)]
    if not logged:
        return []
    (s0, r0), (s1, r1) = logged[0], logged[-1]
    return [f"- training reward (TRL's log, training prompts): {r0:.4g} at step {s0}, {r1:.4g} at step {s1}"]


def report(
    recipe: RlhfRecipe,
    run_dir: RunDir,
    outcome: Outcome,
    samples: dict[str, list[dict[str, Any]]],
    weights: dict[str, float],
    diversity: dict[str, Any],
) -> None:
    """The before/after table on the console, and report.md."""
    columns = ["reward", "weight", "before training", "after training", "change"]
    rows = reward_rows(outcome, weights)
    table("mean reward on held-out prompts", columns, rows)
    before, after = outcome.test_before or {}, outcome.test or {}
    say(f"mean reward: {before.get('mean_reward', 0):.4f} before, {after.get('mean_reward', 0):.4f} after")
    plan = outcome.plan
    lines = [
        f"# {recipe.name}: rlhf policy ({recipe.algorithm}, {recipe.method.type})",
        "",
        f"- policy: `{plan.model}`; reward model: `{plan.details.get('reward_model') or 'none (rule rewards only)'}`",
        f"- prompts: {plan.rows.get('train')} for training, {plan.rows.get('test')} held out; "
        f"{plan.details['num_generations']} samples per prompt, at most {plan.details['max_new_tokens']} new tokens",
        f"- beta (KL to the starting policy): {recipe.beta}",
        f"- trainable parameters: {plan.trainable_params:,} of {plan.total_params:,} "
        f"({100 * plan.trainable_share:.2f}%)",
        f"- steps: {outcome.steps}, training time: {outcome.train_seconds:.2f} s on {plan.device}",
        *training_rewards(run_dir),
        "",
        *warnings_markdown(outcome),
        "## Mean reward on held-out prompts",
        "",
        f"{after.get('samples')} responses ({before.get('prompts')} prompts x {plan.details['num_generations']}), "
        f"sampled with seed {recipe.seed} before and after training, so the two differ only by the model. "
        "The total is the weighted sum that training maximises.",
        "",
        markdown_table(columns, rows),
        *diversity_lines(diversity),
        "## Held-out prompts: a response before and after",
        "",
        markdown_table(
            ["prompt", "before", "reward", "after", "reward"],
            example_rows(samples),
        ),
        "Every scored response is in samples.jsonl.",
        "",
    ]
    run_dir.write_text("report.md", "\n".join(lines))
