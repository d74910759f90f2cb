"""The run directory every job writes (SPEC section 4): resolved recipe, manifest, metrics,
eval, model, report; atomic writes; a lock; finished runs never clobbered."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from llmtune.errors import BadInput, LockHeld
from llmtune.recipes.common import RecipeBase

LOCK_NAME = ".llmtune.lock"
# --resume may change these (how long to train, how often to log/save), nothing else
SAFE_TO_CHANGE_ON_RESUME = (
    "training.max_steps",
    "training.epochs",
    "training.logging_steps",
    "training.save_total_limit",
    "training.early_stopping.patience",
    "output.",
)


def run_dir_path(recipe: RecipeBase, output: Path | str | None = None) -> Path:
    """The run folder: --output if given, else output.dir with {name} and {date} filled in."""
    if output is not None:
        return Path(output)
    name = (recipe.name or "run").replace("/", "-").replace("..", "-")
    template = recipe.output.dir  # type: ignore[union-attr]
    return recipe.resolve_path(template.format(name=name, date=dt.date.today().isoformat()))


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


class OutputLock:
    """An exclusive, non-blocking flock: a second holder gets LockHeld (exit 75) at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.path.read_text().strip() or "another process"
            raise LockHeld(f"{self.path} is held by {holder}; nothing was touched") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {dt.datetime.now().isoformat(timespec='seconds')}".encode())
        self._fd = fd

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)


class RunDir:
    """One job's output folder. Use `open()` only after all input has been validated."""

    def __init__(self, path: Path, recipe: RecipeBase) -> None:
        self.path = path
        self.recipe = recipe
        self.lock = OutputLock(path / LOCK_NAME)
        self.manifest: dict[str, Any] = {}
        self._created: list[Path] = []

    def finished(self) -> bool:
        manifest = self.path / "manifest.json"
        if not manifest.exists():
            return False
        try:
            return json.loads(manifest.read_text()).get("status") == "completed"
        except json.JSONDecodeError:
            return False

    def check_writable(self, *, resume: bool = False) -> None:
        """Refuse a finished run unless output.overwrite, and a --resume whose recipe changed
        (checked before anything is loaded or written)."""
        if resume:
            self.check_resumable()
        overwrite = getattr(self.recipe.output, "overwrite", False)
        if self.finished() and not overwrite and not resume:
            raise BadInput(
                f"{self.path} holds a finished run; set output.overwrite: true "
                "(or --set output.overwrite=true) or choose another --output",
                key="output.dir",
            )

    def check_resumable(self) -> None:
        """--resume needs the same recipe as the interrupted run, but for keys safe to change."""
        stored_file = self.path / "recipe.yaml"
        if not stored_file.exists():
            return
        stored = _flatten(yaml.safe_load(stored_file.read_text()) or {})
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

    def claim(self, *, resume: bool = False) -> None:
        """Check that this folder may be used, then take its lock: the first thing a job does,
        so an overlapping run exits 75 before it reads data or loads a model."""
        self.check_writable(resume=resume)
        self._created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.lock.acquire()

    def abandon(self) -> None:
        """Release the lock of a run that never opened (bad input, dry run): leave no trace, so
        folders this claim created are removed again when they hold nothing but the lock."""
        self.lock.release()
        for folder in self._created:  # deepest first
            lock_file = folder / LOCK_NAME
            if lock_file.exists() and [c.name for c in folder.iterdir()] == [LOCK_NAME]:
                lock_file.unlink()
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        self._created = []

    def open(self, *, resume: bool = False, data_files: list[Path] = ()) -> RunDir:
        """Clear a run being overwritten, write recipe.yaml and the manifest (lock held: claim
        it first, or open takes it here)."""
        if not self.lock.held:
            self.claim(resume=resume)
        if not resume:
            for child in self.path.iterdir():
                if child.name != LOCK_NAME:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        dump = self.recipe.model_dump(mode="json")
        atomic_write_text(self.path / "recipe.yaml", yaml.safe_dump(dump, sort_keys=False))
        self.manifest = {
            "llmtune": _version("llmtune"),
            "kind": self.recipe.kind,
            "name": self.recipe.name,
            "status": "running",
            "started": _now(),
            "ended": None,
            "seed": self.recipe.seed,
            "recipe_file": str(self.recipe.source) if self.recipe.source else None,
            "git_commit": _git_commit(self.recipe.source.parent if self.recipe.source else None),
            "versions": library_versions(),
            "python": platform.python_version(),
            "data_files": {str(p): fingerprint_file(p) for p in data_files},
            "device": device_description(),
        }
        atomic_write_json(self.path / "manifest.json", self.manifest)
        return self

    def update_manifest(self, **fields: Any) -> None:
        self.manifest.update(fields)
        atomic_write_json(self.path / "manifest.json", self.manifest)

    def close(self, status: str, **fields: Any) -> None:
        """Record how the run ended and release the lock."""
        self.update_manifest(status=status, ended=_now(), **fields)
        self.lock.release()

    def write_json(self, name: str, data: Any) -> Path:
        atomic_write_json(self.path / name, data)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.path / name, text)
        return self.path / name

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl (flushed, so a crash keeps what was logged)."""
        with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()

    @property
    def log_file(self) -> Path:
        return self.path / "run.log"


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def device_description() -> str:
    """The accelerator this process can use, or the CPU and its thread count."""
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)} x{torch.cuda.device_count()})"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return f"cpu ({torch.get_num_threads()} threads)"


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries a run depends on."""
    names = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "scikit-learn")
    return {name: _version(name) for name in names}


def _git_commit(folder: Path | None) -> str | None:
    if folder is None:
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def fingerprint_file(path: Path) -> str:
    """sha256 of a file (or of a folder's files), to tell later which data a run saw."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()
