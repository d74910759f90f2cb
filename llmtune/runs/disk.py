"""What a finished run may drop to free disk: its checkpoints/ (for --resume, which a completed
run never needs once model/ is saved). `training.keep_checkpoints` prunes them when a run
completes; `llmtune runs clean` does it for runs already on disk.

Only names a run writes there are ever deleted (CHECKPOINT_CONTENTS, and inside a Trainer's
checkpoint-N/ folder TRAINER_FILES): a file a person put in checkpoints/ stays, and so does the
folder holding it. Links are never followed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from llmtune.outputs import TMP_SUFFIX

# what jobs write directly in checkpoints/ (folders end with "/"): the Trainer's checkpoint-N
# folders, the measurements stored for --resume, distill's baseline trainer, peft's model card
CHECKPOINT_CONTENTS = (
    "checkpoint-*/",
    "test_before.json",
    "retain_before.json",
    "samples_before.json",
    "baseline/",
    "README.md",
    f"*{TMP_SUFFIX}",
    f"*{TMP_SUFFIX}/",
)
# what the HF Trainer (and peft, tokenizers, DeepSpeed) write in a checkpoint-N folder
TRAINER_FILES = (
    *"*.safetensors *.safetensors.index.json *.bin *.bin.index.json *.pt *.pth".split(),
    *"trainer_state.json config.json generation_config.json adapter_config.json".split(),
    *"tokenizer.json tokenizer_config.json special_tokens_map.json added_tokens.json".split(),
    *"vocab.json vocab.txt merges.txt tokenizer.model spiece.model chat_template.jinja".split(),
    *"chat_template.json README.md latest zero_to_fp32.py global_step*/ runs/".split(),
)
KEEP_CHOICES = ("none", "last", "all")


@dataclass
class Droppable:
    """One file or folder a run wrote that can go, and its size in bytes."""

    path: Path
    size: int


def size_of(path: Path) -> int:
    """Bytes on disk of a file, or of everything in a folder (links counted, not followed)."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size if path.exists() or path.is_symlink() else 0
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_symlink() or p.is_file())


def droppable(run: Path, keep: str = "none") -> list[Droppable]:
    """What may be deleted from `run`'s checkpoints/ keeping `keep` (none | last | all):
    whole entries a run wrote, and inside a checkpoint-N folder that also holds a foreign file,
    only the Trainer's own files."""
    folder = run / "checkpoints"
    if keep == "all" or folder.is_symlink() or not folder.is_dir():
        return []
    entries = [c for c in sorted(folder.iterdir()) if _matches(c, CHECKPOINT_CONTENTS)]
    if keep == "last":
        steps = [c for c in entries if _step(c) is not None]
        entries = [c for c in entries if c is not max(steps, key=_step, default=None)]
    out: list[Droppable] = []
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink() and _step(entry) is not None and _foreign(entry):
            inside = [c for c in sorted(entry.iterdir()) if _matches(c, TRAINER_FILES)]
            out += [Droppable(c, size_of(c)) for c in inside]
        else:
            out.append(Droppable(entry, size_of(entry)))
    return out


def drop(run: Path, items: list[Droppable]) -> int:
    """Delete `items` (from `droppable`), then the folders they leave empty up to checkpoints/
    itself; returns the bytes freed."""
    freed = 0
    for item in items:
        path = item.path
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        freed += item.size
    folder = run / "checkpoints"
    for parent in sorted({i.path.parent for i in items}, key=lambda p: len(p.parts), reverse=True):
        while parent.is_relative_to(folder) and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return freed


def prune_checkpoints(run: Path, keep: str) -> int:
    """After a run completed with model/ saved: drop the checkpoints `keep` does not keep;
    returns the bytes freed (0 when model/ is missing: the checkpoints are all there is)."""
    if not (run / "model").is_dir():
        return 0
    return drop(run, droppable(run, keep))


def _matches(path: Path, patterns: tuple[str, ...]) -> bool:
    name = path.name + ("/" if path.is_dir() and not path.is_symlink() else "")
    return any(fnmatch(name, p) for p in patterns)


def _step(path: Path) -> int | None:
    head, _, number = path.name.partition("-")
    return int(number) if head == "checkpoint" and number.isdigit() and path.is_dir() else None


def _foreign(folder: Path) -> bool:
    """Whether a checkpoint-N folder holds anything the Trainer does not write."""
    return any(not _matches(c, TRAINER_FILES) for c in folder.iterdir())
