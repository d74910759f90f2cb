"""Record how long `pip` took to build llama-cpp-python (engine llamacpp's extra) from the log of
`time pip wheel llama-cpp-python` (its `real` / `user` lines), for the Makefile's choice of a
separate venv (`make test-llamacpp`).

    python bench/record_llamacpp_build.py /tmp/llamabuild.log

Writes bench/results/llamacpp_build.md.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_engines import commit, machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    log = Path(sys.argv[1])
    text = log.read_text()
    times = dict(re.findall(r"^(real|user|sys)\s+(\S+)$", text, flags=re.M))
    wheel = re.search(r"filename=(\S+\.whl)", text)
    lines = [
        "# llama-cpp-python: build time of engine llamacpp's extra",
        "",
        f"- commit: {commit()}; recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from {log}",
        f"- machine: {machine()}; load average now {', '.join(f'{x:.1f}' for x in os.getloadavg())} (the build shared the machine with other jobs)",
        f"- command: `python {' '.join(sys.argv)}`",
        "",
        "| wheel | wall (real) | CPU (user) | CPU (sys) |",
        "|---|---|---|---|",
        f"| {wheel.group(1) if wheel else '?'} | {times.get('real', '?')} | {times.get('user', '?')} | {times.get('sys', '?')} |",
    ]
    out = ROOT / "bench" / "results" / "llamacpp_build.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
