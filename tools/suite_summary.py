"""Write bench/results/suite_run.md from the log of a `make test` (or `.ci/run`) run: its pytest
summary line and slowest tests, with commit, machine and load.

    python tools/suite_summary.py LOG COMMIT
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from pathlib import Path


def main(log_path: str, commit: str) -> None:
    lines = [line for line in Path(log_path).read_text().splitlines() if not line.startswith("WARNING")]
    summary = next(line for line in lines if re.search(r"\d+ passed", line))
    start = next(k for k, line in enumerate(lines) if "slowest 25 durations" in line)
    flags = Path("/proc/cpuinfo").read_text()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni") if f in flags]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    text = (
        f"""# The main suite (`make test`) on a fresh clone

- commit: {commit} (a fresh `git clone` of main, `.venv` created by `make test`, run as `CI=true bash .ci/run`)
- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores, ISA: {", ".join(isa)}
- load: nothing else of the session ran meanwhile (load average when written: {load})
- command: `make test` = `pytest -q -n auto --dist loadscope --durations=25`; this file by
  `python tools/suite_summary.py LOG {commit}`

Result: `{summary.strip()}`

Before (0.2.0's closing note, a fresh clone on an idle machine): 631 tests in 586 s of test time.

Slowest 25:

```
"""
        + "\n".join(lines[start + 1 : start + 26])
        + "\n```\n"
    )
    Path("bench/results/suite_run.md").write_text(text)


if __name__ == "__main__":
    main(*sys.argv[1:3])
