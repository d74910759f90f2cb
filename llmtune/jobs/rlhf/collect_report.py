"""What the collect stage shows a person: the plan before sampling, and at the end the numbers on
the console and in report.md, with the next step (`llmtune rank`)."""

from __future__ import annotations

from typing import Any

from llmtune.console import markdown_table, table
from llmtune.data.rankings import letters
from llmtune.recipes.rlhf import RlhfRecipe
from llmtune.runs.rundir import RunDir

CANDIDATES = "candidates.jsonl"


def collect_plan(recipe: RlhfRecipe, run_dir: RunDir, prompts: int) -> dict[str, Any]:
    """The --dry-run table and the start of the summary: the model, how many prompts and
    responses, how they are sampled, and where they go."""
    g = recipe.generation
    return {
        "run_dir": str(run_dir.path),
        "stage": "collect",
        "model": recipe.model.describe(),
        "prompts": prompts,
        "responses_per_prompt": g.num_generations,
        "letters": f"{letters(g.num_generations)[0]}..{letters(g.num_generations)[-1]}",
        "max_new_tokens": g.max_new_tokens,
        "sampling": f"temperature {g.temperature}, top_p {g.top_p}, top_k {g.top_k or 'off'}, seed {recipe.seed}",
        "output": str(run_dir.path / CANDIDATES),
    }


def write_report(run_dir: RunDir, recipe: RlhfRecipe, summary: dict[str, Any]) -> None:
    """The numbers on the console and in report.md, with the next step."""
    items = [
        "prompts",
        "responses_per_prompt",
        "generated_prompts",
        "reused_from_journal",
        "tokens_generated",
        "seconds",
        "rows_per_second",
        "duplicates",
        "prompts_with_duplicates",
        "empty_responses",
        "truncated_prompts",
        "skipped_rows",
    ]
    rows = [[name.replace("_", " "), summary[name]] for name in items]
    table("collect", ["item", "value"], rows)
    candidates = run_dir.path / CANDIDATES
    lines = [
        f"# {recipe.name or 'collect'}: responses to rank",
        "",
        f"{summary['prompts']} prompts x {summary['responses_per_prompt']} responses sampled from "
        f"{summary['model']} (temperature {recipe.generation.temperature}, top_p "
        f"{recipe.generation.top_p}, top_k {recipe.generation.top_k or 'off'}, seed {recipe.seed}).",
        "",
        markdown_table(["item", "value"], rows).rstrip("\n"),
        "",
        DUPLICATES_NOTE,
        "",
        f"Next: `llmtune rank {candidates}`",
        "",
    ]
    run_dir.write_text("report.md", "\n".join(lines))


DUPLICATES_NOTE = (
    "Duplicates are responses identical to another response of the same prompt (a prompt with 3 "
    "identical responses counts 2): their letters show the same text, and a ranking can tie them "
    "(`A = C`)."
)
