"""free_text pairs after every model has generated: reference metrics, assertions and the judge,
each written per row into the predictions and measured per pair.

The judge is loaded once, after the compared models are unloaded, and scores every pair's outputs
(and, with people's scores, the texts they scored) in one pass through the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import llmtune.jobs.prompt_eval.judge as judging
from llmtune.console import say
from llmtune.data.readers import Rows
from llmtune.errors import BadInput
from llmtune.jobs.prompt_eval.assertions import run_assertions
from llmtune.jobs.prompt_eval.measures import generation_measures
from llmtune.jobs.prompt_eval.references import hypothesis, reference_scores
from llmtune.jobs.prompt_eval.statistics import Measure
from llmtune.recipes.prompt_eval import PromptEvalRecipe

JUDGE_FIELDS = {"output", "reference", "rubric", "low", "high"}
EngineFactory = Callable[[], Any]  # loads the judge and returns an engine over it


def check_judge_inputs(recipe: PromptEvalRecipe, rows: Rows) -> None:
    """Before anything loads: the judge template names only known fields, and people's scores come
    with the text they scored (a completion column)."""
    if recipe.judge is None:
        if "human_score" in recipe.data.columns:
            raise BadInput("data.columns.human_score needs a judge to compare with", key="data.columns")
        return
    template = judging.judge_template(recipe.judge)
    template.check_fields(set(rows.rows[0]), file=rows.where[0], extra=JUDGE_FIELDS)
    for row, where in zip(rows.rows, rows.where):
        if row.get("human_score") is not None and not isinstance(row.get("completion"), str):
            raise BadInput(
                "the row has a human_score but no completion (the text the people scored); "
                "map it with data.columns.completion",
                file=where,
                key="data.columns.human_score",
            )


def finish_free_text(
    recipe: PromptEvalRecipe,
    rows: Rows,
    pairs: list[dict[str, Any]],
    predictions: list[dict[str, Any]],
    judge_engine: EngineFactory | None,
) -> tuple[list[dict[str, Measure]], dict[str, Any]]:
    """Score every pair's outputs; fills each prediction's metrics / assertions / judge, and
    returns each pair's measures and results.json's `generation` section."""
    n = len(rows)
    by_pair = [predictions[k * n : (k + 1) * n] for k in range(len(pairs))]
    scores, checks = [], []
    for preds in by_pair:
        hyps = [hypothesis(p.get("output") or "", recipe.answer_pattern) for p in preds]
        scores.append(reference_scores(hyps, [p["gold"] for p in preds]))
        checks.append(run_assertions(recipe.assertions, [p.get("output") or "" for p in preds]))
        for p, hyp, metrics, i in zip(preds, hyps, scores[-1].rows, range(n)):
            p["hypothesis"] = hyp
            p["metrics"] = metrics
            if recipe.assertions:
                p["assertions"] = {name: passed[i] for name, passed in checks[-1].items()}
    section: dict[str, Any] = {}
    judged: list[list[float | None]] | None = None
    if recipe.judge is not None and judge_engine is not None:
        judged, section["judge"] = _judge_all(recipe, rows, by_pair, judge_engine)
    measures = [
        generation_measures(s, c, judged[k] if judged is not None else None)
        for k, (s, c) in enumerate(zip(scores, checks))
    ]
    return measures, section


def _judge_all(
    recipe: PromptEvalRecipe, rows: Rows, by_pair: list[list[dict[str, Any]]], make_engine: EngineFactory
) -> tuple[list[list[float | None]], dict[str, Any]]:
    judge = recipe.judge
    assert judge is not None
    template = judging.judge_template(judge)
    prompts = [
        judging.judge_prompt(template, judge, rows.rows[i], p.get("output") or "", rows.where[i])
        for preds in by_pair
        for i, p in enumerate(preds)
    ]
    human = [i for i, r in enumerate(rows.rows) if r.get("human_score") is not None]
    prompts += [
        judging.judge_prompt(template, judge, rows.rows[i], str(rows.rows[i]["completion"]), rows.where[i])
        for i in human
    ]
    say(f"judge: {judge.model.describe()} scores {len(prompts)} texts")
    engine = make_engine()
    if judge.chat:
        prompts = [engine.apply_chat_template(t, judge.system) for t in prompts]
    verdicts = judging.run_judge(engine, judge, prompts)
    n = len(rows)
    judged = []
    for k, preds in enumerate(by_pair):
        mine = verdicts[k * n : (k + 1) * n]
        for p, v in zip(preds, mine):
            p["judge"] = {"reply": v.reply, "score": v.score}
        judged.append([v.score for v in mine])
    section: dict[str, Any] = {
        "model": judge.model.describe(),
        "scale": judge.scale,
        "unparseable": sum(v.score is None for v in verdicts[: n * len(by_pair)]),
        "replies": n * len(by_pair),
    }
    if human:
        calibration = verdicts[n * len(by_pair) :]
        section["agreement"] = judging.agreement(
            [v.score for v in calibration], [rows.rows[i]["human_score"] for i in human], judge.scale
        )
        section["agreement"]["unparseable"] = sum(v.score is None for v in calibration)
    return judged, section
