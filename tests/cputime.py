"""A pytest plugin that records each test's wall and CPU seconds (its own process plus the
subprocesses it waited for), so the suite's cost can be compared across busy machines: the
wall time of a test depends on the load, its CPU time hardly does.

Enabled by `LLMTUNE_TEST_TIMES=<file.jsonl>` (tests/conftest.py loads it); every pytest process,
xdist workers included, appends one JSON line per test. `tools/suite_times.py` summarises them."""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator

import pytest


def _session(event: str, session: pytest.Session) -> None:
    """The controller's start/end: time, load average and the command, for the summary."""
    target = os.environ.get("LLMTUNE_TEST_TIMES")
    if not target or hasattr(session.config, "workerinput"):  # xdist workers: tests only
        return
    import sys

    record = {"session": event, "time": time.time(), "load": os.getloadavg(), "argv": sys.argv[1:]}
    with open(target, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def pytest_sessionstart(session: pytest.Session) -> None:
    _session("start", session)


def pytest_sessionfinish(session: pytest.Session) -> None:
    _session("finish", session)


def _cpu() -> tuple[float, float]:
    """This process's CPU seconds, and its children's: the subprocesses it waited for and the
    runs its CLI fork server forked for it (tests/cli_server.py)."""
    import cli_server

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime + cli_server.forked_cpu


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    target = os.environ.get("LLMTUNE_TEST_TIMES")
    start, (own, kids) = time.perf_counter(), _cpu()
    yield
    if not target:
        return
    wall, (own2, kids2) = time.perf_counter() - start, _cpu()
    record = {
        "test": item.nodeid,
        "wall": round(wall, 3),
        "cpu": round(own2 - own, 3),
        "cpu_children": round(kids2 - kids, 3),
        "slow": item.get_closest_marker("slow") is not None,
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
    }
    with open(target, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
