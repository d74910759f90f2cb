"""Summarise the test suite's cost from the per-test records tests/cputime.py writes
(`LLMTUNE_TEST_TIMES=<file> pytest ...`, or `make test-times`), as a markdown file.

    python tools/suite_times.py after.jsonl [--before before.jsonl] [--output tests/SUITE_TIMES.md]

CPU seconds (the test's process plus the subprocesses it waited for) are what compares across
runs on a busy machine: wall seconds grow with the load, CPU seconds hardly do. Ray's worker
processes are not children of the test, so their CPU is not counted (the wall time shows them).
With --before, the two runs are compared test by test over the tests both hold, and in total.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

SLOW_S = 5.0  # a test over this many CPU seconds should carry @pytest.mark.slow


def load(path: Path) -> tuple[dict[str, dict], list[dict]]:
    """Per-test records (the last one of a test wins) and the session records."""
    tests: dict[str, dict] = {}
    sessions: list[dict] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "session" in record:
            sessions.append(record)
        else:
            record["cpu_total"] = record["cpu"] + record["cpu_children"]
            tests[record["test"]] = record
    return tests, sessions


def machine() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in have)
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {platform.machine()}, {platform.processor() or 'cpu'} ({flags or 'no AVX2'})"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summary(name: str, tests: dict[str, dict], sessions: list[dict]) -> list[str]:
    wall = sum(t["wall"] for t in tests.values())
    cpu = sum(t["cpu_total"] for t in tests.values())
    fast = [t for t in tests.values() if not t["slow"]]
    lines = [f"### {name}", ""]
    starts = [x for x in sessions if x["session"] == "start"]
    finishes = [x for x in sessions if x["session"] == "finish"]
    for start, finish in zip(starts, finishes):  # one line per pytest session the file holds
        load = f"load {start['load'][0]:.1f} -> {finish['load'][0]:.1f}"
        lines.append(
            f"- `pytest {' '.join(start['argv'])[:160]}`: {finish['time'] - start['time']:.0f} s wall, {load}"
        )
    lines += [
        f"- tests recorded: {len(tests)} ({len(fast)} not marked slow)",
        f"- sum of test wall seconds: {wall:.0f} s; sum of test CPU seconds: {cpu:.0f} s "
        f"(not slow: {sum(t['cpu_total'] for t in fast):.0f} s)",
        "",
        "Slowest 10 by CPU seconds:",
        "",
        "| CPU s | wall s | slow mark | test |",
        "|---:|---:|:---:|---|",
    ]
    for t in sorted(tests.values(), key=lambda t: -t["cpu_total"])[:10]:
        lines.append(
            f"| {t['cpu_total']:.1f} | {t['wall']:.1f} | {'yes' if t['slow'] else 'no'} | `{t['test']}` |"
        )
    unmarked = [t for t in tests.values() if not t["slow"] and t["cpu_total"] > SLOW_S]
    lines += ["", f"Not marked slow yet over {SLOW_S:.0f} CPU s: {len(unmarked)}"]
    lines += [
        f"- `{t['test']}` ({t['cpu_total']:.1f} s)" for t in sorted(unmarked, key=lambda t: -t["cpu_total"])
    ]
    return lines + [""]


def compare(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    """CPU seconds per file over the tests both runs hold (a file partly run in one of them is
    compared on its common tests only)."""
    common = set(before) & set(after)
    files: dict[str, list[float]] = {}
    for test in common:
        row = files.setdefault(test.split("::")[0], [0.0, 0.0, 0])
        row[0] += before[test]["cpu_total"]
        row[1] += after[test]["cpu_total"]
        row[2] += 1
    lines = [
        f"### Per file, CPU seconds over the {len(common)} tests both runs hold",
        "",
        "| file | tests | before | after | after / before |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (old, new, n) in sorted(files.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| `{name}` | {n} | {old:.1f} | {new:.1f} | {new / old if old else float('nan'):.2f} |")
    old = sum(r[0] for r in files.values())
    new = sum(r[1] for r in files.values())
    lines.append(f"| all of these | {len(common)} | {old:.1f} | {new:.1f} | {new / max(old, 1e-9):.2f} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("after", type=Path, help="records of the run to summarise")
    parser.add_argument("--before", type=Path, help="records of an earlier run to compare with")
    parser.add_argument("--output", type=Path, default=Path("tests/SUITE_TIMES.md"))
    parser.add_argument("--note", action="append", default=[], help="a line to add under the title")
    args = parser.parse_args()
    after, after_sessions = load(args.after)
    lines = [
        "# The test suite's cost",
        "",
        f"Written by `tools/suite_times.py` on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC "
        f"at commit {commit()}; machine: {machine()}.",
        "CPU seconds = the test process's plus its waited-for subprocesses' (load-independent); wall "
        "seconds depend on the machine's load at the time.",
        "",
        *[f"- {note}" for note in args.note],
        "",
    ]
    if args.before:
        before, before_sessions = load(args.before)
        lines += summary(f"Before ({args.before.name})", before, before_sessions)
        lines += summary(f"After ({args.after.name})", after, after_sessions)
        lines += compare(before, after)
    else:
        lines += summary(args.after.name, after, after_sessions)
    args.output.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
