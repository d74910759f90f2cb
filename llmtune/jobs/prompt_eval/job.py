"""`llmtune prompt-eval`: zero-, one- and few-shot prompts and several models, scored side by side.

Steps: read the scored rows and the example pools, check labels and templates, build every prompt
and find each model's head (all before anything is written), then open the run directory and load
each model once, score every prompt on the same rows through the shared engine, and write
results.json, predictions.jsonl, report.md and a chart; with `slices:`, every metric also per value
of each slice column. A quality gate (`--fail-under METRIC=VALUE`, `METRIC@COLUMN=VALUE`,
`METRIC@COLUMN=SLICE=VALUE`, or `fail_under:`) makes the run exit 1 when it is not met, naming the
pair, metric and slice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import llmtune.inference.registry as registry
from llmtune.console import say
from llmtune.data.labels import check_labels, infer_labels
from llmtune.data.readers import Rows, closest, read_rows, refuse
from llmtune.data.splits import load_splits
from llmtune.errors import BadInput, GateFailed, Problem
from llmtune.inference.batching import free_memory
from llmtune.jobs.prompt_eval.generation import check_judge_inputs, finish_free_text
from llmtune.jobs.prompt_eval.measures import annotate, classification_measures, one_class_warning, values
from llmtune.jobs.prompt_eval.model_plans import ModelPlan, check_chat_templates, plan_model
from llmtune.jobs.prompt_eval.prompts import PromptBuilder, chat_prompt
from llmtune.jobs.prompt_eval.references import require_scorers, signatures
from llmtune.jobs.prompt_eval.report import evaluate_gate, print_table, write_outputs
from llmtune.jobs.prompt_eval.scoring import normalise, pair_metrics, score_prompts, scoring_method
from llmtune.jobs.prompt_eval.statistics import Measure
from llmtune.models.loading import inspect_model, load_model, quiet_libraries
from llmtune.provenance import device_description
from llmtune.recipes.common import ModelRef
from llmtune.recipes.prompt_eval import PromptEvalRecipe, PromptSpec, gate_metrics
from llmtune.runs.lifecycle import recorded, show_plan
from llmtune.runs.options import JobOptions
from llmtune.runs.rundir import RunDir, run_dir_path
from llmtune.slices import Gate, check_slice_columns, parse_gates, slice_metrics, slice_values


def run(recipe: PromptEvalRecipe, options: JobOptions) -> dict[str, Any]:
    """Score every model x prompt pair on the same rows; returns the summary (for --json)."""
    quiet_libraries(options.debug)
    run_dir = RunDir(run_dir_path(recipe, options.output), recipe)
    # first: an overlapping run exits 75 before reading anything (a dry run takes no lock)
    run_dir.claim(dry_run=options.dry_run)
    try:
        if recipe.engine != "hf":
            registry.require(recipe.engine)
        if recipe.task == "free_text":
            require_scorers()
        gates = parse_gates(
            options.fail_under, gate_metrics(recipe), recipe.slices, defaults=recipe.fail_under
        )
        rows, labels, pools, files = read_data(recipe)
        check_slices(recipe, rows, gates)
        builders = {
            name: PromptBuilder(
                name,
                spec,
                pool=pools[name][0],
                pool_source=pools[name][1],
                labels=labels,
                seed=recipe.seed,
                recipe_file=_src(recipe),
            )
            for name, spec in recipe.prompts.items()
        }
        for builder in builders.values():
            builder.check(rows)
        plans = {name: plan_model(ref, recipe, name, labels) for name, ref in recipe.models.items()}
        check_judge_inputs(recipe, rows)
        if recipe.judge is not None:
            inspect_model(recipe.judge.model, recipe, "judge.model")  # it exists, before anything is written
        for model_plan in plans.values():  # a scoring the engine cannot do: refused before loading
            if model_plan.head == "causal_lm" or recipe.engine == "onnx":
                registry.check_task(recipe.engine, scoring_method(recipe, model_plan.head), key="scoring")
        # plain prompts are the same for every model; chat prompts wait for each model's chat template
        built = {
            name: [b.messages(r, i) if b.spec.chat else b.render(r, i) for i, r in enumerate(rows.rows)]
            for name, b in builders.items()
        }
        check_chat_templates(recipe, builders, plans)
        plan = _plan(recipe, run_dir, rows, labels, plans)
        if options.dry_run:
            show_plan(plan)
            for name, prompts in built.items():
                shown = prompts[0] if isinstance(prompts[0], str) else json.dumps(prompts[0], indent=1)
                say(f"prompt {name}, first row:\n{shown}")
            run_dir.abandon()
            return {"dry_run": True, **plan}
    except BaseException:
        run_dir.abandon()  # bad input: nothing written
        raise

    def evaluate() -> dict[str, Any]:
        pairs, predictions, measures = score_all(recipe, rows, labels, plans, built, builders)
        extra: dict[str, Any] = {}
        if recipe.task == "free_text":
            measures, extra = finish_free_text(recipe, rows, pairs, predictions, _judge_engine(recipe))
            extra["signatures"] = signatures()
        for pair, measured in zip(pairs, measures):
            if recipe.task == "free_text":
                pair["metrics"] = values(measured)
            if recipe.slices:
                pair["slices"] = slice_metrics(rows.rows, recipe.slices, lambda ix, m=measured: values(m, ix))
        stats = recipe.statistics
        comparisons = annotate(
            pairs, measures, recipe.metrics, stats.confidence, stats.resamples, recipe.seed
        )
        extra["statistics"] = {
            "confidence": stats.confidence,
            "resamples": stats.resamples,
            "seed": recipe.seed,
        }
        extra["comparisons"] = comparisons
        run_dir.update_manifest(device=device_description())  # the threads model.threads chose
        result = write_outputs(
            run_dir,
            recipe,
            pairs,
            predictions,
            {n: p.head for n, p in plans.items()},
            labels,
            len(rows),
            extra,
        )
        print_table(recipe, pairs, comparisons)
        return {**result["summary"], "gate": evaluate_gate(pairs, gates, recipe.fail_when)}

    summary = recorded(run_dir, options, files, evaluate)
    if summary["gate"]["failures"]:
        raise GateFailed(summary["gate"]["failures"], summary)
    return summary


def _plan(
    recipe: PromptEvalRecipe,
    run_dir: RunDir,
    rows: Rows,
    labels: list[str] | None,
    plans: dict[str, ModelPlan],
) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir.path),
        "rows": len(rows),
        "labels": labels if labels is not None else "free text",
        "models": {
            name: f"{ref.describe()} ({scoring_method(recipe, plans[name].head)})"
            for name, ref in recipe.models.items()
        },
        "prompts": {name: _describe_prompt(spec) for name, spec in recipe.prompts.items()},
        "pairs": len(recipe.models) * len(recipe.prompts),
        **({"assertions": [a.label for a in recipe.assertions]} if recipe.assertions else {}),
        **({"judge": recipe.judge.model.describe()} if recipe.judge else {}),
    }


def _describe_prompt(spec: PromptSpec) -> str:
    chat = ", chat" if spec.chat else ""
    return f"{spec.shots}-shot, {spec.selection}{chat}" if spec.shots else f"zero-shot{chat}"


def check_slices(recipe: PromptEvalRecipe, rows: Rows, gates: list[Gate]) -> None:
    """Every scored row has each slice column, and a gate on one slice names a value that occurs
    (a misspelt slice would otherwise fail every run, or never be checked)."""
    check_slice_columns(rows.rows, rows.where, recipe.slices, key="slices")
    for gate in gates:
        if gate.slice is None:
            continue
        values = slice_values(rows.rows, gate.column or "")
        if gate.slice not in values:
            raise BadInput(
                f"{gate.target}: no scored row has {gate.column}={gate.slice}; "
                f"the values are {', '.join(values)}",
                key="--fail-under",
            )


def read_data(
    recipe: PromptEvalRecipe,
) -> tuple[Rows, list[str] | None, dict[str, tuple[Rows | None, str]], list[Path]]:
    """Scored rows, labels (None for free text), each prompt's example pool, and the files read."""
    splits = load_splits(recipe, recipe.data, required=("label",), label_field="label")
    rows = splits.test
    if not rows.rows:
        raise BadInput(
            "no rows to score: give data.test, or data.train with data.split.test",
            file=_src(recipe),
            key="data",
        )
    labels = None
    if recipe.task == "classification":
        labels = recipe.labels or infer_labels(rows)
        if len(labels) < 2:
            raise BadInput(f"the scored rows have only one label ({labels[0]}); give labels", key="labels")
        check_labels(splits, labels)
    files = list(splits.files)
    pools: dict[str, tuple[Rows | None, str]] = {}
    for name, spec in recipe.prompts.items():
        if spec.shots == 0:
            pools[name] = (None, "")
        elif spec.examples_from is None:
            pools[name] = (splits.train if splits.train.rows else None, "the train split")
        else:
            key = f"prompts.{name}.examples_from"
            pool, used = read_rows(
                recipe, spec.examples_from, key, columns=recipe.data.columns, required=("label",)
            )
            if labels is not None:
                _check_pool_labels(pool, labels, key)
            files += [f for f in used if f not in files]
            pools[name] = (pool, ", ".join(str(f) for f in used))
    return rows, labels, pools, files


def _check_pool_labels(pool: Rows, labels: list[str], key: str) -> None:
    """Every example row whose label is not in `labels`, at once, with the near label."""
    problems = []
    for row, where in zip(pool.rows, pool.where):
        label = str(row["label"])
        if label not in labels:
            near = closest(label, labels)
            hint = f" (did you mean {near!r}?)" if near else ""
            problems.append(
                Problem(f"{key}: example label {label!r} is not in labels {labels}{hint}", file=where)
            )
    if problems:
        refuse(problems)


def _src(recipe: PromptEvalRecipe) -> str | None:
    return str(recipe.source) if recipe.source else None


def score_all(
    recipe: PromptEvalRecipe,
    rows: Rows,
    labels: list[str] | None,
    plans: dict[str, ModelPlan],
    built: dict[str, list[Any]],
    builders: dict[str, PromptBuilder],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Measure]]]:
    """Load each model once and score every prompt with it: the pairs (classification: with their
    metrics), every prediction in pair order, and each pair's classification measures."""
    gold = [str(r["label"]) for r in rows.rows]
    # the data's own id (else the row's file:line), so anyone can join a prediction to its row
    ids = [str(r["id"]) if r.get("id") is not None else w for r, w in zip(rows.rows, rows.where)]
    groups = {c: [str(r[c]) for r in rows.rows] for c in recipe.slices}
    pairs, predictions, measures = [], [], []
    for model_name, ref in recipe.models.items():
        plan = plans[model_name]
        method = scoring_method(recipe, plan.head)
        say(f"loading {model_name}: {ref.describe()} ({plan.head}, scored by {method})")
        loaded = load_model(ref, recipe, head=plan.head, key=f"models.{model_name}", labels=plan.head_labels)
        engine = _engine(
            recipe, ref, f"models.{model_name}", plan.head, loaded, recipe.max_new_tokens, plan.head_labels
        )
        for prompt_name, builder in builders.items():
            texts = built[prompt_name]
            if builder.spec.chat:
                texts = [chat_prompt(loaded.tokenizer, m, model_name, prompt_name) for m in texts]
            truncated = sum(n > recipe.data.max_length for n in engine.count_tokens(texts))
            started = time.monotonic()
            scored = score_prompts(engine, method, recipe, texts, labels, chat=builder.spec.chat)
            seconds = time.monotonic() - started
            predicted = [s.prediction for s in scored]
            pair: dict[str, Any] = {
                "model": model_name,
                "prompt": prompt_name,
                "scoring": method,
                "n": len(texts),
                "metrics": pair_metrics(gold, predicted, labels, method),
                "truncated_prompts": truncated,
                "seconds": round(seconds, 3),
                "rows_per_second": round(len(texts) / seconds, 2) if seconds > 0 else None,
            }
            pairs.append(pair)
            shown = ""
            if labels is not None:
                measures.append(classification_measures(gold, predicted, labels, method == "generate"))
                shown = f"{recipe.metrics[0]} {pair['metrics'][recipe.metrics[0]]:.4f} "
                warning = one_class_warning(pair, predicted, gold)
                if warning:
                    pair["warnings"] = [warning]
                    say(f"warning: {warning}")
            say(f"{model_name} x {prompt_name}: {shown}({len(texts)} rows, {seconds:.1f} s)")
            if truncated:
                say(
                    f"  {truncated} prompt(s) longer than data.max_length={recipe.data.max_length} tokens were cut"
                )
            for i, (text, s) in enumerate(zip(texts, scored)):
                predictions.append(
                    {
                        "id": ids[i],
                        "model": model_name,
                        "prompt": prompt_name,
                        "prompt_text": text,
                        "prediction": s.prediction,
                        "gold": gold[i],
                        "correct": s.prediction == gold[i]
                        if labels is not None
                        else normalise(s.prediction or "") == normalise(gold[i]),
                        "scores": s.scores,
                        **({"slices": {c: v[i] for c, v in groups.items()}} if groups else {}),
                        **s.extra,
                    }
                )
        del engine, loaded
        free_memory()
    return pairs, predictions, measures


def _judge_engine(recipe: PromptEvalRecipe) -> Any:
    """A function that loads the judge model and returns an engine over it (None: no judge)."""
    judge = recipe.judge
    if judge is None:
        return None

    def make() -> Any:
        say(f"loading judge: {judge.model.describe()}")
        loaded = load_model(judge.model, recipe, head="causal_lm", key="judge.model")
        return _engine(recipe, judge.model, "judge.model", "causal_lm", loaded, judge.max_new_tokens)

    return make


def _engine(
    recipe: PromptEvalRecipe,
    ref: ModelRef,
    key: str,
    head: str,
    loaded: Any,
    max_new_tokens: int,
    labels: list[str] | None = None,
) -> Any:
    """The shared engine over a loaded model, from the registry: causal LMs run on the recipe's
    engine, classification heads on engine hf (or onnx; int8 heads on ONNX Runtime's int8)."""
    engine = recipe.engine if head == "causal_lm" or recipe.engine == "onnx" else "hf"
    engine = registry.int8_runtime(engine, ref, head)
    return registry.over_loaded(
        engine,
        loaded,
        ref=ref,
        recipe=recipe,
        head=head,
        labels=labels,
        key=key,
        batch_size=recipe.batching.batch_size,
        max_batch_tokens=recipe.batching.max_batch_tokens,
        max_length=recipe.data.max_length,
        max_new_tokens=max_new_tokens,
        settings={"vllm": recipe.vllm},
    )
