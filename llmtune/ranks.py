"""Which process this is among those a launcher (`torchrun`, `accelerate launch`) started: the
launcher sets WORLD_SIZE, RANK and LOCAL_RANK for each; without one, this is the only process, of
rank 0. A base module, so that the console (one console: rank 0's) and the run directory (rank 0
writes it) ask the same question the same way; the process group itself is `runs.distributed`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from llmtune.errors import BadInput


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the launcher's processes."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run directory, the lock and the console."""
        return self.rank == 0

    @property
    def many(self) -> bool:
        """More than one process: the `distributed:` settings apply."""
        return self.world_size > 1


def ranks() -> Ranks:
    """This process's world size, rank and local rank, from the variables that torchrun and
    accelerate launch set (one process of rank 0 without them)."""
    try:
        return Ranks(*(int(os.environ.get(k, d)) for k, d in _ENV))
    except ValueError:
        raise BadInput("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers", key="distributed") from None


_ENV = (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this process is rank 0, or the only process: the one that writes the run directory
    and speaks on the console. Reads RANK alone and never fails: a RANK that is not a whole
    number is not rank 0 (`ranks()` refuses it as bad input where a run starts)."""
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return False
