"""Reading the rows of an rlhf stage, and the prompt text a row gives the models.

A row's prompt is `data.template` rendered over the row when the recipe has a template, else the
row's `prompt` field, which must be text (chat-message prompts are not supported by the rlhf
stages yet: exit 2 naming the row). The reward model reads prompt + response as one text
(`scoring.py`), so a prompt should end where a response begins (e.g. "...\\nAnswer:").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune.data.readers import Row, Rows, Splits
from llmtune.data.splits import load_splits
from llmtune.data.templates import Template
from llmtune.errors import BadInput
from llmtune.models.loading import LoadedModel
from llmtune.recipes.common import Training
from llmtune.recipes.rlhf import RlhfRecipe
from llmtune.runs.job import Plan, count_parameters, training_plan


def read_splits(recipe: RlhfRecipe, required: tuple[str, ...] = ()) -> Splits:
    """train/validation/test rows of the recipe's data (carved by data.split where not given)."""
    if recipe.data.train is None:
        raise BadInput(f"stage {recipe.stage} needs data.train", file=_src(recipe), key="data.train")
    return load_splits(recipe, recipe.data, required=required, render_into=None)


def prompt_text(row: Row, template: Template | None, where: str | None = None) -> str:
    """The prompt a row shows the policy (and, followed by a response, the reward model)."""
    if template is not None:
        return template.render(row, where=where)
    prompt: Any = row.get("prompt")
    if isinstance(prompt, str) and prompt:
        return prompt
    if prompt in (None, ""):
        raise BadInput(
            "row has no 'prompt' (map your column with data.columns: {prompt: COLUMN})", file=where
        )
    what = "chat messages" if isinstance(prompt, list) else f"a {type(prompt).__name__}"
    raise BadInput(
        f"the rlhf stages take text prompts; this row's prompt is {what} "
        "(write the prompt as text, or build it with data.template)",
        file=where,
    )


def prompts_of(rows: Rows, template: Template | None) -> list[str]:
    """Every row's prompt text, in row order."""
    return [prompt_text(row, template, where) for row, where in zip(rows.rows, rows.where)]


def stage_plan(
    run_dir: Path,
    recipe: RlhfRecipe,
    splits: Splits,
    loaded: LoadedModel,
    model: Any,
    training: Training,
    training_rows: int,
    details: dict[str, Any],
    skipped_rows: int | None = None,
) -> Plan:
    """The plan of an rlhf stage training `model` (the method applied to `loaded`): `training_rows`
    examples (pairs, rows or completions) a step is planned from, `skipped_rows` those the stage
    skipped when it counts them itself (else the splits' count)."""
    return training_plan(
        run_dir,
        task=recipe.stage,
        method=recipe.method.type,
        model=recipe.model.describe(),
        rows=splits.counts(),
        skipped_rows=splits.skipped() if skipped_rows is None else skipped_rows,
        parameters=count_parameters(model),
        training=training,
        training_rows=training_rows,
        device=loaded.device,
        details=details,
    )


def frozen_copy(model: Any) -> Any:
    """A frozen copy of `model` as it is now: the reference a KL penalty keeps the policy near."""
    import copy

    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad = False
    return reference


def _src(recipe: RlhfRecipe) -> str | None:
    return str(recipe.source) if recipe.source else None


def people_agreement(splits: Splits) -> dict[str, Any] | None:
    """How much the annotators of the ranking rows agree (all splits together: agreement is about
    the people, not a split); None when no row is ranked by two people. Bad rows are left out
    here (the stage itself refuses or counts them)."""
    from llmtune.data.agreement import agreement_of
    from llmtune.data.annotators import rankings_of
    from llmtune.data.rankings import RankingError

    ranked = []
    for name in ("train", "validation", "test"):
        rows: Rows = getattr(splits, name)
        for row, where in zip(rows.rows, rows.where):
            responses = row.get("responses")
            if not isinstance(responses, list) or not 2 <= len(responses) <= 26:
                continue
            try:
                ranked.append((where, rankings_of(row, len(responses))))
            except RankingError:
                continue
    found = agreement_of(ranked)
    return found.summary() if found.pairwise is not None else None


def agreement_lines(agreement: dict[str, Any] | None, accuracy: float | None, measure: str) -> list[str]:
    """report.md's paragraph on the people's own agreement next to the model's `measure`."""
    if agreement is None:
        return [
            "No row is ranked by two people, so their agreement is not known: rank a share of the rows "
            "with two annotators (`llmtune rank FILE --annotator NAME`) to learn how far a model can go.",
            "",
        ]
    alpha = agreement["krippendorff_alpha_ordinal"]
    model = f" ({measure} after training: {accuracy:.3f})" if accuracy is not None else ""
    return [
        f"{agreement['annotators']} annotators ranked {agreement['shared_rows']} rows in common: two of them "
        f"order a pair of responses the same way {agreement['pairwise_agreement']:.3f} of the time "
        f"({agreement['comparisons']} comparisons, ties included); Krippendorff's alpha (ordinal) "
        f"{'undefined' if alpha is None else f'{alpha:.3f}'}. A model trained on these rankings cannot be "
        f"expected to agree with people more than they agree with each other{model}.",
        "",
    ]
