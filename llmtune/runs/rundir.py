"""The run directory every job writes (SPEC section 4): resolved recipe, manifest, metrics,
eval, model, report; atomic writes with the user's umask; one lock per output; and what llmtune
may delete.

A run directory is new, empty, or one llmtune made (it holds llmtune's manifest.json). Any other
folder, or a file, is refused before anything is touched, and so is a run directory that is,
holds or lies inside a file the job reads. Starting a failed run over, or replacing a finished
one (`output.overwrite`), deletes only the names in RUN_CONTENTS: what a run writes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from llmtune import provenance
from llmtune.errors import BadInput, LockHeld
from llmtune.outputs import (
    TMP_SUFFIX,
    OutputLock,
    apply_umask,
    atomic_write_json,
    atomic_write_text,
    open_append,
)
from llmtune.provenance import device_description, git_commit, library_versions, package_version
from llmtune.ranks import ranks
from llmtune.recipes.common import ModelRef, RecipeBase
from llmtune.runs.distributed import manifest_fields
from llmtune.runs.lineage import lineage

LOCK_NAME = ".llmtune.lock"
# What a run writes, the one list of it: the only names llmtune ever deletes from a run
# directory. A job that writes a new top-level name adds it here; anything else in the folder is
# the user's and stays. Folders end with "/".
RUN_CONTENTS = (
    *"recipe.yaml manifest.json metrics.jsonl eval.json predictions.jsonl results.json".split(),
    *"report.md sweep.json study.db study.db-journal best.yaml run.log *.png model/ checkpoints/ trials/".split(),
    *"teacher_labels.jsonl teacher_generations.jsonl".split(),  # distill: the teacher's journal
    *"candidates.jsonl collect_journal.jsonl samples.jsonl".split(),  # rlhf: collect, before/after samples
    f"*{TMP_SUFFIX}",
    f"*{TMP_SUFFIX}/",
)
# --resume may change these (how long to train, how often to log/save), nothing else
SAFE_TO_CHANGE_ON_RESUME = (
    "training.max_steps",
    "training.epochs",
    "training.logging_steps",
    "training.save_total_limit",
    "training.keep_checkpoints",
    "training.early_stopping.patience",
    "sweep.trials",  # a sweep's budget may grow (or its timeout change) when it is resumed
    "sweep.timeout",
    "output.",
)
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def run_dir_path(recipe: RecipeBase, output: Path | str | None = None) -> Path:
    """The run folder: --output if given, else output.dir with exactly {name} and {date} filled in
    (no str.format: nothing else in braces is interpreted, it is refused)."""
    if output is not None:
        return Path(output)
    template = str(recipe.output.dir)  # type: ignore[union-attr]
    where = {"file": str(recipe.source) if recipe.source else None, "key": "output.dir"}
    for match in re.finditer(r"\{[^{}]*\}|[{}]", template):
        if match[0] not in ("{name}", "{date}"):
            raise BadInput(
                f"{match[0]!r} in {template!r} is not a placeholder: only {{name}} and {{date}} are "
                "filled in, and no other braces are allowed",
                **where,
            )
    name = (recipe.name or "run").replace("/", "-").replace("\\", "-").replace("..", "-")
    if name in ("", "."):
        raise BadInput(f"a run name cannot be {name!r}: it names no folder of its own", **where)
    values = {"name": name, "date": dt.date.today().isoformat()}
    return recipe.resolve_path(_PLACEHOLDER.sub(lambda m: values[m[1]], template))


class RunDir:
    """One job's output folder. Use `open()` only after all input has been validated."""

    def __init__(self, path: Path, recipe: RecipeBase) -> None:
        self.path = path
        self.recipe = recipe
        self.lock = OutputLock(path / LOCK_NAME)
        self.manifest: dict[str, Any] = {}

    def stored_manifest(self) -> dict[str, Any] | None:
        """The manifest.json an llmtune run wrote here (any status), or None."""
        return provenance.read_manifest(self.path)

    def finished(self) -> bool:
        """Whether a run completed here."""
        return (self.stored_manifest() or {}).get("status") == "completed"

    def _refuse(self, message: str) -> BadInput:
        return BadInput(
            message, file=str(self.recipe.source) if self.recipe.source else None, key="output.dir"
        )

    def check_usable(self) -> None:
        """Refuse a file, or a folder llmtune did not make (not empty, no manifest of llmtune's),
        or one that is, holds or lies in what the job reads (recipe, local models)."""
        real = self.path.resolve()
        if real.exists() and not real.is_dir():
            raise self._refuse(
                f"{self.path} is a file, not an llmtune run directory; choose another output.dir"
            )
        if real.is_dir() and self.stored_manifest() is None:
            # a run killed before its manifest leaves temp files (and its lock): those are
            # llmtune's own; a lock file alone is not, since anyone can make one
            children = [c.name for c in real.iterdir()]
            foreign = sorted(c for c in children if c != LOCK_NAME and not c.endswith(TMP_SUFFIX))
            if children == [LOCK_NAME] and not self.lock.held:
                if holder := self.lock.holder():  # a run that has just started here: overlap
                    raise LockHeld(f"{self.path / LOCK_NAME} is held by {holder}; nothing was touched")
                foreign = [LOCK_NAME]  # a lock file alone, held by no one: anyone can make one
            if foreign:
                shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise self._refuse(
                    f"{self.path} is not an llmtune run directory (it holds {shown} and no llmtune "
                    "manifest.json); llmtune never writes into, or empties, other folders: choose "
                    "another output.dir (or --output)"
                )
        self.check_reads(_read_paths(self.recipe))
        self.check_no_links()

    def check_no_links(self) -> None:
        """Refuse a run directory where something llmtune writes (RUN_CONTENTS, the lock) is a
        symbolic link: llmtune made none of them links, so one there was put by someone else."""
        if not self.path.is_dir():
            return
        self.lock.check()
        for child in self.path.iterdir():
            if child.is_symlink() and any(fnmatch(child.name, p.rstrip("/")) for p in RUN_CONTENTS):
                raise self._refuse(
                    f"{child} is a symbolic link (to {os.readlink(child)}), and llmtune never writes "
                    "through a link it did not create: remove it, or choose another output.dir"
                )

    def check_reads(self, paths: Iterable[Path]) -> None:
        """Refuse a run directory that is or holds a file the job reads, or lies in a folder it reads."""
        real = self.path.resolve()
        for path in paths:
            read = Path(path).resolve()
            if read.is_relative_to(real):
                relation = "is" if read == real else "holds"
            elif read.is_dir() and real.is_relative_to(read):
                relation = "lies inside"
            else:
                continue
            raise self._refuse(
                f"the run directory {self.path} {relation} {path}, which this job reads; "
                "choose another output.dir (or --output)"
            )

    def check_writable(self, *, resume: bool = False) -> None:
        """Refuse a folder llmtune may not use, a finished run unless output.overwrite (--resume
        included), and a --resume whose recipe changed; before anything is loaded or written."""
        self.check_usable()
        if self.finished() and not getattr(self.recipe.output, "overwrite", False):
            if resume:
                raise self._refuse(
                    f"{self.path} holds a finished run: there is nothing to resume. Set output.overwrite: "
                    "true to train it again, or start a new run (another --output)"
                )
            raise self._refuse(
                f"{self.path} holds a finished run; set output.overwrite: true "
                "(or --set output.overwrite=true) or choose another --output"
            )
        if resume:
            self.check_resumable()

    def check_resumable(self) -> None:
        """--resume needs the same recipe as the interrupted run, but for keys safe to change."""
        stored_file = self.path / "recipe.yaml"
        if not stored_file.exists():
            return
        raw = yaml.safe_load(stored_file.read_text()) or {}
        try:  # keys added by a newer llmtune take their defaults, as in the current recipe
            raw = type(self.recipe).model_validate(raw).model_dump(mode="json")
        except ValueError:
            pass  # not valid any more: compare as written
        stored = _flatten(raw)
        current = _flatten(self.recipe.model_dump(mode="json"))
        changed = [
            key
            for key in sorted(set(stored) | set(current))
            if stored.get(key) != current.get(key) and not key.startswith(SAFE_TO_CHANGE_ON_RESUME)
        ]
        if changed:
            shown = "; ".join(f"{k} was {stored.get(k)!r}, now {current.get(k)!r}" for k in changed[:5])
            raise BadInput(
                f"--resume needs the recipe of the interrupted run, but {shown}. Only "
                f"{', '.join(SAFE_TO_CHANGE_ON_RESUME)} may change; start a new run (another --output) "
                "to change the rest",
                file=str(stored_file),
                key=changed[0],
            )

    def check_same_data(self, fingerprints: dict[str, str]) -> None:
        """--resume needs the data files of the interrupted run, byte for byte (their sha256);
        files in the recipe's folder are compared by their path in it, so a moved project resumes."""
        stored = self.stored_manifest() or {}
        if stored.get("data_files") is None:
            return  # stopped before its manifest was written: it saw no data yet
        folder = Path(stored["recipe_file"]).resolve().parent if stored.get("recipe_file") else None
        before = {_data_key(Path(k), folder): v for k, v in stored["data_files"].items()}
        for name in sorted(set(before) | set(fingerprints)):
            if before.get(name) != fingerprints.get(name):
                what = "changed since the interrupted run read it"
                if name not in before:
                    what = "was not read by the interrupted run"
                elif name not in fingerprints:
                    what = "was read by the interrupted run and is not read now"
                raise BadInput(
                    f"--resume needs the data of the interrupted run, but {name} {what}; "
                    "start a new run (another --output)",
                    file=str(self.recipe.source) if self.recipe.source else None,
                    key="data",
                )

    def claim(self, *, resume: bool = False, ranks_agree: bool = False, dry_run: bool = False) -> None:
        """Check that this folder may be used, then take its lock: the first thing a job does,
        so an overlapping run exits 75 before it reads data or loads a model. Under torchrun /
        accelerate launch only a training run (`ranks_agree`: rank 0 claims, the others follow
        its verdict) may claim; any other job is refused on every rank, before the lock.
        A dry run only checks: it opens nothing for writing, not even the lock."""
        if not ranks_agree and ranks().many:
            raise self._refuse(
                f"this {self.recipe.kind} job runs in one process: start it with plain `llmtune`, "
                "not under torchrun or accelerate launch (those are for training runs)"
            )
        self.check_writable(resume=resume)  # before the lock file: a refused folder is untouched
        if dry_run:
            return
        self.lock.acquire()
        try:
            self.check_writable(resume=resume)  # again under the lock: a run may have ended meanwhile
        except BaseException:
            self.lock.discard()
            raise

    def abandon(self) -> None:
        """Release the lock of a run that never opened (bad input, dry run): leave no trace, so
        the lock file and folders this claim created go again."""
        self.lock.discard()

    def open(self, *, resume: bool = False, data_files: Iterable[Path] = ()) -> RunDir:
        """Check the data files against the run directory (and, on --resume, against the
        interrupted run's), clear what an earlier run wrote, write the manifest and recipe.yaml
        (lock held: claim it first, or open takes it here)."""
        if not self.lock.held:
            self.claim(resume=resume)
        files = [Path(p) for p in data_files]
        try:
            self.check_reads(files)
            folder = self.recipe.source.resolve().parent if self.recipe.source else None
            fingerprints = {_data_key(p.resolve(), folder): fingerprint_file(p) for p in files}
            if resume:
                self.check_same_data(fingerprints)
        except BaseException:
            self.abandon()
            raise
        if not resume and self.stored_manifest() is not None:
            self._clear()
        self.manifest = {
            "llmtune": package_version("llmtune"),
            "kind": self.recipe.kind,
            "name": self.recipe.name,
            "status": "running",
            "started": _now(),
            "ended": None,
            "seed": self.recipe.seed,
            "recipe_file": str(self.recipe.source.resolve()) if self.recipe.source else None,
            "git_commit": git_commit(self.recipe.source.parent if self.recipe.source else None),
            "versions": library_versions(),
            "python": platform.python_version(),
            "data_files": fingerprints,
            "device": device_description(),
            **manifest_fields(self.recipe),
        }
        if history := lineage(self.recipe):
            self.manifest["lineage"] = history
        # the manifest first: from now on the folder is recognisably llmtune's
        atomic_write_json(self.path / "manifest.json", self.manifest)
        dump = self.recipe.model_dump(mode="json")
        atomic_write_text(self.path / "recipe.yaml", yaml.safe_dump(dump, sort_keys=False))
        return self

    def _written_by_runs(self) -> list[Path]:
        """What runs wrote here: the entries RUN_CONTENTS names (symlinks never followed)."""
        out = []
        for child in self.path.iterdir():
            name = child.name + ("/" if child.is_dir() and not child.is_symlink() else "")
            if any(fnmatch(name, pattern) for pattern in RUN_CONTENTS):
                out.append(child)
        return out

    def _clear(self) -> None:
        """Delete what an earlier run wrote here and nothing else. The manifest stays until the
        new one replaces it, so that a run killed meanwhile leaves a folder still known as llmtune's."""
        for child in self._written_by_runs():
            if child.name != "manifest.json":
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    def update_manifest(self, **fields: Any) -> None:
        """Add `fields` to the manifest and rewrite it."""
        self.manifest.update(fields)
        atomic_write_json(self.path / "manifest.json", self.manifest)

    def close(self, status: str, **fields: Any) -> None:
        """Record how the run ended and release the lock."""
        self.update_manifest(status=status, ended=_now(), **fields)
        # libraries write some files 0600 (safetensors does, in checkpoints too): the user's umask
        # decides who may read a run, so its files get the modes a plain open would give them
        with contextlib.suppress(OSError):  # a mode is not worth hiding how the run ended
            for path in self._written_by_runs():
                apply_umask(path)
        self.lock.release()

    def write_json(self, name: str, data: Any) -> Path:
        """Write `name` in the run directory atomically, as JSON."""
        atomic_write_json(self.path / name, data)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        """Write `name` in the run directory atomically."""
        atomic_write_text(self.path / name, text)
        return self.path / name

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl (flushed, so a crash keeps what was logged)."""
        with open_append(self.path / "metrics.jsonl") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()

    @property
    def log_file(self) -> Path:
        """Where a crash's traceback goes."""
        return self.path / "run.log"


def _read_paths(recipe: RecipeBase) -> list[Path]:
    """What the job reads that is known before its data: the recipe file and local model folders."""
    paths = [recipe.source] if recipe.source else []
    for value in dict(recipe).values():
        for ref in value.values() if isinstance(value, dict) else [value]:
            if isinstance(ref, ModelRef):
                local = [recipe.resolve_path(p) for p in (ref.path, ref.adapter) if p]
                paths += [p for p in local if p.exists()]
    return paths


def _data_key(path: Path, folder: Path | None) -> str:
    """A data file as the manifest names it: by its path in the recipe's folder when it is in it."""
    if not path.is_absolute():
        return path.as_posix()
    real = path.resolve()
    return real.relative_to(folder).as_posix() if folder and real.is_relative_to(folder) else str(real)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def fingerprint_file(path: Path) -> str:
    """sha256 of a file (or of a folder's files), to tell later which data a run saw."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()
