"""The model of a bulk-infer job: what its config says it can do, and the engine that serves it
(the recipe's `engine:` through the registry; engine ray runs engine hf in each replica), with
the checks that refuse a model that cannot serve the recipe before anything is written."""

from __future__ import annotations

import llmtune.inference.registry as registry
from llmtune.console import say
from llmtune.errors import BadInput
from llmtune.inference.interface import EngineRequest, InferenceEngine
from llmtune.models.info import ModelInfo, head_columns
from llmtune.models.loading import inspect_model
from llmtune.recipes.bulk_infer import BulkInferRecipe


def model_info(recipe: BulkInferRecipe, *, deep: bool = True) -> ModelInfo:
    """The model's head and label names, from its config (refusing models that are neither a
    causal LM nor a classifier, and a task the head cannot do). `deep=False`: without the checks
    that import transformers, for a run that will load nothing."""
    runtime = runtime_of(recipe)
    registry.require(runtime)  # a missing extra names it before the model is looked at
    info = registry.inspect(runtime, recipe.model, recipe) or inspect_model(
        recipe.model, recipe, "model", deep=deep
    )
    if info.head is None:
        raise BadInput(
            f"{recipe.model.path} is neither a causal LM nor a classifier (architectures: "
            f"{info.architectures or 'unknown'}); fine-tune a classification head first (llmtune finetune) "
            "or use a causal LM",
            key="model.path",
        )
    runtime = runtime_of(recipe, info.head)
    registry.check_head(runtime, info.head, recipe.model.path)
    registry.check_task(runtime, recipe.task)
    _head_labels(recipe, info)  # a task the head cannot do is refused before anything loads
    return info


def with_model_labels(recipe: BulkInferRecipe, info: ModelInfo) -> BulkInferRecipe:
    """The recipe with `labels:` settled before anything loads: omitted, a classification head's
    own names (config id2label); given, they must be the head's (BadInput at --dry-run)."""
    if recipe.task != "classify":
        return recipe
    if info.head != "classification":
        if not recipe.labels:
            raise BadInput("task: classify with a causal LM needs labels: the names to score", key="labels")
        return recipe
    names = info.head_labels
    if not recipe.labels:
        if not names:
            raise BadInput(
                "task: classify: the model's head has no label names (generic LABEL_0..); give labels",
                key="labels",
            )
        return recipe.model_copy(update={"labels": list(names)})
    if names and head_columns(names, recipe.labels) is None:
        raise BadInput(f"labels {recipe.labels} are not the model's labels {names}", key="labels")
    return recipe


def runtime_of(recipe: BulkInferRecipe, head: str | None = None) -> str:
    """The registry engine that runs the model: engine ray's replicas run engine hf; int8 on a
    head runs on ONNX Runtime (`registry.int8_runtime`) once the head is known."""
    if recipe.engine == "ray":
        return "hf"
    return registry.int8_runtime(recipe.engine, recipe.model, head)


def engine_request(recipe: BulkInferRecipe, info: ModelInfo) -> EngineRequest:
    """What the engine needs to open this recipe's model."""
    assert info.head is not None
    return EngineRequest(
        ref=recipe.model,
        recipe=recipe,
        head=info.head,
        labels=_head_labels(recipe, info),
        batch_size=recipe.batching.batch_size,
        max_batch_tokens=recipe.batching.max_batch_tokens,
        max_length=recipe.max_length,
        max_new_tokens=recipe.generation.max_new_tokens,
        label_range=info.label_range,
        settings={"vllm": recipe.vllm},
        merge_adapters=True,  # this job owns the model
    )


def setup_model(recipe: BulkInferRecipe, info: ModelInfo) -> InferenceEngine:
    """Open the model on the recipe's engine (adapters folded in) and check it can serve the recipe."""
    runtime = runtime_of(recipe, info.head)
    if runtime != runtime_of(recipe):
        say(f"model.quantization: int8 runs on ONNX Runtime's dynamic int8 (engine {runtime})")
    engine = registry.open_engine(runtime, engine_request(recipe, info))
    try:
        check_model(recipe, engine)
    except BaseException:
        engine.close()
        raise
    return engine


def check_without_weights(recipe: BulkInferRecipe, info: ModelInfo) -> None:
    """setup_model's checks on the model built on the meta device (no weights read, no memory),
    for engines that load the model in other processes (ray)."""
    assert info.head is not None
    from llmtune.models.loading import load_model

    labels = _head_labels(recipe, info)
    loaded = load_model(recipe.model, recipe, head=info.head, labels=labels, empty_weights=True)
    request = EngineRequest(
        ref=recipe.model,
        recipe=recipe,
        head=info.head,
        loaded=loaded,
        max_length=recipe.max_length,
        label_range=info.label_range,
    )
    check_model(recipe, registry.open_engine("hf", request))


def check_model(recipe: BulkInferRecipe, engine: InferenceEngine) -> None:
    """Refuse, before anything is written, a model that cannot serve this recipe."""
    if recipe.chat:
        engine.apply_chat_template("")  # raises BadInput when there is no chat template
    if engine.classifier and recipe.labels:
        names = engine.head_labels()
        if head_columns(names, recipe.labels) is None:
            raise BadInput(f"labels {recipe.labels} are not the model's labels {names}", key="labels")


def _head_labels(recipe: BulkInferRecipe, info: ModelInfo) -> list[str] | None:
    """The label names to load the head with; BadInput when the task does not fit the head."""
    if info.head != "classification":
        if recipe.task == "score":
            raise BadInput(
                f"task: score needs a model with a regression head (llmtune finetune with task: "
                f"regression); {recipe.model.describe()} is a causal LM: use task: generate or classify",
                key="task",
            )
        return None
    if info.regression and recipe.task != "score":
        raise BadInput(
            "this model has a regression head (one output that predicts a number): use task: score",
            key="task",
        )
    if not info.regression and recipe.task != "classify":
        hint = " (it has no regression head to score with)" if recipe.task == "score" else ""
        raise BadInput(f"this model has a classification head{hint}: use task: classify", key="task")
    # load with the head's own label names (a fine-tuned adapter folder records them)
    return info.head_labels or recipe.labels
