"""The layout shows the architecture: data and imports flow CLI -> job -> shared pieces. No job
imports another job, nothing below the CLI imports it, the shared floors (base modules, recipes,
data, models, engines) import nothing above them nor a job's recipe, there are no import circles,
and the recipe -> TrainingArguments mapping is pinned key by key."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, write

PACKAGE = ROOT / "llmtune"


def import_graph() -> dict[str, set[str]]:
    """module -> the llmtune modules it imports (top-level and inside functions alike)."""
    modules: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    graph[module].add(name)
    return graph


def job_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "jobs" else None


def test_the_graph_sees_the_jobs() -> None:
    graph = import_graph()
    assert "llmtune.jobs.finetune.classification" in graph
    assert "llmtune.runs.lifecycle" in graph["llmtune.jobs.finetune.classification"]


def test_no_job_imports_another_job() -> None:
    crossings = [
        f"{m} -> {d}"
        for m, deps in import_graph().items()
        for d in deps
        if job_of(m) and job_of(d) and job_of(m) != job_of(d)
    ]
    assert not crossings


def test_nothing_below_the_cli_imports_it() -> None:
    upward = [m for m, deps in import_graph().items() if "llmtune.cli" in deps and m != "llmtune.__main__"]
    assert not upward


def test_shared_pieces_never_import_a_job() -> None:
    upward = [
        f"{m} -> {d}"
        for m, deps in import_graph().items()
        for d in deps
        if not job_of(m) and job_of(d) and m != "llmtune.cli"
    ]
    assert not upward


BASE_MODULES = {
    f"llmtune.{name}"
    for name in ("errors", "metrics", "console", "environment", "provenance", "outputs", "folders", "ranks")
} | {"llmtune"}
# a job's recipe module; the recipes package imports every one of them
JOB_RECIPES = {
    f"llmtune.recipes.{kind}" for kind in ("finetune", "distill", "rlhf", "prompt_eval", "bulk_infer")
}
JOB_RECIPES.add("llmtune.recipes")


def under(module: str, *folders: str) -> bool:
    """Whether `module` is one of llmtune's `folders` (a package or a top-level module) or in it."""
    return any(module == f"llmtune.{f}" or module.startswith(f"llmtune.{f}.") for f in folders)


def is_cli(module: str) -> bool:
    """llmtune.cli, its cli_* modules and __main__."""
    name = module.split(".")[1] if "." in module else ""
    return name in ("cli", "__main__") or name.startswith("cli_")


def test_shared_code_never_imports_a_job_recipe() -> None:
    """Data, models and engines get what they need from the shared vocabulary (recipes/common,
    methods, sources, ...) or as parameters, never as a job's recipe type."""
    upward = [
        f"{m} -> {d}"
        for m, deps in import_graph().items()
        for d in deps
        if under(m, "data", "models", "inference") and d in JOB_RECIPES
    ]
    assert not upward


def test_base_modules_import_only_base_modules() -> None:
    """errors, metrics, console, environment, provenance and outputs are the ground floor."""
    upward = [
        f"{m} -> {d}"
        for m, deps in import_graph().items()
        for d in deps
        if m in BASE_MODULES and d not in BASE_MODULES
    ]
    assert not upward


def test_shared_floors_never_import_runs_jobs_or_the_cli() -> None:
    """The run lifecycle, the jobs and the CLI sit above data, models, engines, recipes and the base
    modules: no arrow runs back up (models/ writing a file uses llmtune.outputs, not runs/)."""
    upward = [
        f"{m} -> {d}"
        for m, deps in import_graph().items()
        for d in deps
        if (m in BASE_MODULES or under(m, "data", "models", "inference", "recipes"))
        and (under(d, "runs", "jobs") or is_cli(d))
    ]
    assert not upward


def floor(module: str) -> str:
    """The folder (or top-level module) of llmtune that `module` is in: `data`, `runs`, `cli`..."""
    return module.split(".")[1] if "." in module else module


def test_no_two_floors_import_each_other() -> None:
    """Imports between folders run one way: cli -> jobs -> runs, inference -> models, data ->
    recipes -> the base modules; no pair of folders leans on each other."""
    arrows = {(floor(m), floor(d)) for m, deps in import_graph().items() for d in deps}
    both_ways = sorted({tuple(sorted(a)) for a in arrows if a[0] != a[1] and a[::-1] in arrows})
    assert not both_ways


def test_no_import_circles() -> None:
    graph = import_graph()
    circles = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                # a package importing its own submodule to re-export it is not a circle of behaviour
                if nxt == start and not start.startswith(path[-1] + "."):
                    circles.append(" -> ".join((*path, nxt)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*path, nxt)))
    assert not circles, circles[:5]


def test_engines_are_reached_only_through_the_interface() -> None:
    """Jobs hold an InferenceEngine from the registry: no module imports an engine's module (the
    registry imports them by name when chosen), and every registry entry is a module with
    `open_engine`, so adding an engine is one module and one entry."""
    from llmtune.inference.registry import ENGINES

    engine_modules = {e.module for e in ENGINES.values()}
    reaching = [f"{m} -> {d}" for m, deps in import_graph().items() for d in deps if d in engine_modules]
    assert not reaching
    for name, entry in ENGINES.items():
        source = (ROOT / (entry.module.replace(".", "/") + ".py")).read_text()
        assert "\ndef open_engine(" in source, name


def test_modules_stay_small_enough_to_read_whole() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long


def test_recipe_to_training_arguments_is_pinned(tmp_path: Path) -> None:
    from llmtune.recipes import load_recipe
    from llmtune.runs.training import training_arguments

    path = write(
        tmp_path / "r.yaml",
        """kind: finetune
model: {scratch: {architecture: bert, hidden_size: 32, num_layers: 2, num_heads: 2}}
data: {train: t.jsonl, split: {validation: 0.2}}
training:
  epochs: 2.5
  batch_size: 7
  grad_accum: 3
  learning_rate: 3.0e-4
  lr_scheduler: cosine
  warmup_ratio: 0.1
  weight_decay: 0.01
  max_grad_norm: 0.5
  eval_steps: 5
  logging_steps: 4
  save_total_limit: 3
  early_stopping: {patience: 2, metric: eval_f1}
seed: 123
""",
    )
    recipe = load_recipe(path, None)
    args = training_arguments(recipe.training, tmp_path / "run", device="cpu", seed=123, has_validation=True)
    assert args.num_train_epochs == 2.5 and args.max_steps == -1
    assert args.per_device_train_batch_size == 7 and args.per_device_eval_batch_size == 7
    assert args.gradient_accumulation_steps == 3
    assert args.learning_rate == 3.0e-4 and args.lr_scheduler_type == "cosine"
    assert args.weight_decay == 0.01 and args.max_grad_norm == 0.5
    # warmup_ratio is a share of the steps, not a step count: 10% of 200 steps is 20
    assert args.get_warmup_steps(200) == 20
    assert (args.eval_strategy, args.eval_steps, args.save_strategy, args.save_steps) == (
        "steps",
        5,
        "steps",
        5,
    )
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_f1" and args.greater_is_better
    assert args.logging_steps == 4 and args.save_total_limit == 3
    # --resume restores early stopping's patience counter (a resumed run stops where the
    # uninterrupted one would) and the trackers are only those the recipe names
    assert args.restore_callback_states_from_checkpoint and args.report_to in ([], "none", ["none"])
    assert args.seed == 123 and args.data_seed == 123 and args.use_cpu
    assert args.output_dir == str(tmp_path / "run" / "checkpoints")

    no_validation = training_arguments(
        recipe.training, tmp_path / "run", device="cpu", seed=1, has_validation=False
    )
    assert no_validation.eval_strategy == "no" and not no_validation.load_best_model_at_end


@pytest.mark.parametrize("verb", ["finetune", "prompt-eval"])
def test_the_lock_is_taken_before_data_or_model_are_read(tmp_path: Path, verb: str) -> None:
    """An overlapping cron run exits 75 at once, before it reads data or loads a model: here the
    data file is missing and the model does not exist, so a job that looked first would say 2."""
    from llmtune.recipes import load_recipe
    from llmtune.runs.rundir import RunDir, run_dir_path

    if verb == "finetune":
        body = "kind: finetune\nmodel: {path: nobody/no-such-model}\ndata: {train: missing.jsonl}\n"
    else:
        body = (
            "kind: prompt-eval\nmodels: {m: {path: nobody/no-such-model}}\ndata: {test: missing.jsonl}\n"
            "labels: [a, b]\nprompts: {zero: {template: '{{ text }}'}}\n"
        )
    path = write(tmp_path / "r.yaml", body + "output: {dir: run}\n")
    recipe = load_recipe(path, None)
    holder = RunDir(run_dir_path(recipe), recipe)
    holder.claim()
    try:
        result = run_cli(verb, path)
    finally:
        holder.abandon()
    assert result.code == 75, result.stderr
    assert "held by" in result.stderr
    assert run_cli(verb, path).code == 2  # the same run without the overlap: the bad input it has
    assert not (tmp_path / "run").exists()


def test_bench_and_tools_scripts_import_what_exists() -> None:
    """The bench and tools scripts import llmtune's names as the package now holds them (a move
    inside llmtune/ must move their imports too: they run only under `make bench`/`results`)."""
    import importlib

    missing = []
    for script in sorted([*(ROOT / "bench").glob("*.py"), *(ROOT / "tools").glob("*.py")]):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmtune"):
                module = importlib.import_module(node.module or "")
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{script.name}: {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("llmtune"):
                        importlib.import_module(alias.name)
    assert not missing
