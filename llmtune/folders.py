"""Whole folders written in one step (an export, a merged model): written beside their place
under a temp name, then renamed into it, so that a reader never sees half a folder and a
failure leaves the earlier folder as it was. Files within a folder follow llmtune.outputs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from llmtune.outputs import TMP_SUFFIX, apply_umask

T = TypeVar("T")


def replace_folder(
    target: Path,
    write: Callable[[Path], T],
    carry: Callable[[Path, Path], list[str]] | None = None,
) -> T:
    """Run `write` on a new folder beside `target` (a unique temp name: never one someone else
    made), then rename it into target's place; what `write` returns. A folder already there
    (callers have checked that it may go) is moved aside first and deleted only once the new one
    is in; `carry(target, new)` names files of it to move into the new folder (moved back on
    failure). On failure only the temp folder is removed and the old one is put back as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX))
    old: Path | None = None
    carried: list[str] = []
    try:
        result = write(tmp)
        apply_umask(tmp)  # mkdtemp made it 0700
        if target.is_dir() and any(target.iterdir()):
            names = carry(target, tmp) if carry is not None else []
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old.", suffix=TMP_SUFFIX))
            os.replace(target, old)  # onto the empty temp folder
            for name in names:
                os.replace(old / name, tmp / name)
                carried.append(name)
        os.replace(tmp, target)  # onto nothing, or an empty folder
    except BaseException:
        if old is not None:
            for name in carried:
                os.replace(tmp / name, old / name)
            old.rmdir() if target.exists() else os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)
    return result
