"""`llmtune runs clean [DIR] [--yes]`: free the disk that completed runs no longer need (their
checkpoints/, kept for a --resume that a completed run never takes). Without --yes it only
lists; with --yes it deletes exactly what it listed, each run under its lock (a run in use is
skipped), and only the files runs wrote (`llmtune.runs.disk`). Runs that did not complete keep
their checkpoints: --resume needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.errors import LockHeld
from llmtune.jobs.runs_table.listing import find_runs, status_of
from llmtune.outputs import OutputLock
from llmtune.provenance import read_manifest
from llmtune.runs.disk import Droppable, drop, droppable
from llmtune.runs.rundir import LOCK_NAME


@dataclass
class Cleanup:
    """What `runs clean` found: per run, what may go; and the runs it leaves alone, with why."""

    items: dict[Path, list[Droppable]] = field(default_factory=dict)
    skipped: dict[Path, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Bytes the deletion frees."""
        return sum(i.size for items in self.items.values() for i in items)

    def as_dict(self) -> dict[str, Any]:
        """For --json."""
        return {
            "delete": [
                {"path": str(i.path), "bytes": i.size} for items in self.items.values() for i in items
            ],
            "bytes": self.total,
            "skipped": {str(k): v for k, v in self.skipped.items()},
        }


def plan_cleanup(folder: Path) -> Cleanup:
    """What deleting the checkpoints of the completed runs under `folder` (sweep trials
    included) would remove."""
    out = Cleanup()
    runs = find_runs(folder)
    runs += [t for run in list(runs) if (run / "trials").is_dir() for t in find_runs(run / "trials")]
    for run in runs:
        manifest = read_manifest(run) or {}
        status = status_of(run, manifest)
        items = droppable(run)
        if not items:
            continue
        if status != "completed":
            out.skipped[run] = f"{status}: its checkpoints are what --resume continues from"
        elif not (run / "model").is_dir():
            out.skipped[run] = "no model/: its checkpoints are the only copy of the weights"
        else:
            out.items[run] = items
    return out


def delete(cleanup: Cleanup) -> int:
    """Delete what `cleanup` listed, run by run under the run's lock; a run that is in use or
    no longer a completed run is left alone (and moved to `skipped`). Returns bytes freed."""
    freed = 0
    for run, items in list(cleanup.items.items()):
        lock = OutputLock(run / LOCK_NAME)
        try:
            lock.acquire()
        except LockHeld:
            cleanup.skipped[run] = "in use by another llmtune process"
            del cleanup.items[run]
            continue
        try:
            if (read_manifest(run) or {}).get("status") != "completed":
                cleanup.skipped[run] = "changed since it was listed"
                del cleanup.items[run]
                continue
            listed = {i.path for i in droppable(run)}
            freed += drop(run, [i for i in items if i.path in listed])
        finally:
            lock.release()
    return freed
