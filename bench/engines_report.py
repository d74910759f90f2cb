"""The tables and goal lines of bench_engines.py: best of the interleaved runs, each runner's
whole-process line (start-up + N / steady rate), where vLLM alone overtakes each llmtune engine,
and the Markdown written to bench/results/."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

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


def gguf_note(export_s: float, main_runs: dict) -> list[str]:
    """How long the one-off GGUF export took (not in engine: llamacpp's whole process)."""
    if "llamacpp" not in main_runs:
        return []
    return [
        f"engine: llamacpp ran an f16 GGUF written once before the runs by `llmtune export --format gguf`'s "
        f"writer in {fmt(export_s)} s (a one-off, like saving the model: not in its whole process).",
        "",
    ]


def render(
    args: Any, export_s: float, before: str, after: str, main_runs: dict, cross: dict, sizes: list[int]
) -> str:
    """The Markdown of bench/results/engines*.md: machine, command, tables and goal lines."""
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
        *gguf_note(export_s, main_runs),
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
