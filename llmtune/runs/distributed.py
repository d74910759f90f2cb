"""Training under `torchrun` / `accelerate launch`: the process group (which rank this process
is: `llmtune.ranks`), one verdict for every rank, and the recipe's `distributed:` section as HF
TrainingArguments.

The launcher starts one `llmtune` per rank with WORLD_SIZE, RANK and LOCAL_RANK set. Every rank
parses and validates the same recipe, loads the model and data, and trains its share; rank 0
alone takes the lock and writes the run directory (the HF Trainer also saves checkpoints from
rank 0, plus each rank's own RNG or shard files inside them). Wherever rank 0 may refuse (lock
held, run directory refused, bad input found while preparing), the ranks meet in `agreed`: each
learns how the step ended everywhere and raises the same error, so all exit with rank 0's code
at once instead of waiting for a partner that has left.

One process (no launcher, or WORLD_SIZE=1) is the plain case: nothing here communicates, and the
recipe's `distributed:` settings are ignored.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from llmtune.errors import BadInput, Interrupted, LockHeld
from llmtune.ranks import Ranks, is_main, ranks
from llmtune.recipes.distributed import DeepSpeed, Distributed, Fsdp

T = TypeVar("T")


_settings: ContextVar[Distributed | None] = ContextVar("distributed_settings", default=None)


@contextmanager
def training_ranks(recipe: Any) -> Iterator[Ranks]:
    """Around a training run: join the launcher's process group (several ranks only) and make
    the recipe's `distributed:` section the one `trainer_arguments` applies."""
    settings = getattr(recipe, "distributed", None) or Distributed()
    world = ranks()
    joined = world.many and join(settings)
    token = _settings.set(settings)
    try:
        yield world
    finally:
        _settings.reset(token)
        if joined:
            leave()


def join(settings: Distributed) -> bool:
    """Start this rank's process group through accelerate (once per process): gloo on CPU,
    nccl on CUDA GPUs, or `distributed.backend`. The Trainer later finds it already joined.
    Whether this call started it (and `leave` should end it)."""
    import torch.distributed as dist
    from accelerate import PartialState

    if dist.is_available() and dist.is_initialized():
        return False
    backend = None if settings.backend == "auto" else settings.backend
    PartialState(cpu=backend == "gloo" or not _cuda(), backend=backend)
    return True


def leave() -> None:
    """End this rank's process group before the process exits, however the run ended. Left to
    the interpreter's exit, gloo's threads could still be running while C++ statics are torn
    down, and a rank whose partner had already exited (rank 0 refusing a held lock) died of
    SIGABRT ("terminate called without an active exception") instead of exiting with its code."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def agreed(step: Callable[[], T], *, only_main: bool = False) -> T:
    """Run `step` on every rank (or on rank 0 alone, its result then handed to all ranks), then
    agree on how it ended: when a rank failed, every rank raises that failure (rank 0's first),
    so that all of them exit with the same code (2 bad input, 75 lock held, 130/143 interrupted,
    1 otherwise). One process: just `step()`."""
    world = ranks()
    if not world.many:
        return step()
    result: Any = None
    error: BaseException | None = None
    verdict: tuple[str, str, int] | None = None
    if world.main or not only_main:
        try:
            result = step()
        except BaseException as exc:  # noqa: BLE001 - shared with the other ranks, then raised
            error, verdict = exc, _verdict(exc)
    verdicts = _gather((verdict, result if only_main and world.main else None))
    failed = [(r, v) for r, (v, _) in enumerate(verdicts) if v is not None]
    if failed:
        rank, first = failed[0]
        if error is not None and rank == world.rank:
            raise error
        raise _rebuilt(first, rank)
    return verdicts[0][1] if only_main else result


def _verdict(exc: BaseException) -> tuple[str, str, int]:
    if isinstance(exc, BadInput):
        return "bad_input", str(exc), 0
    if isinstance(exc, LockHeld):
        return "locked", str(exc), 0
    if isinstance(exc, Interrupted):
        return "interrupted", str(exc), exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "interrupted", int(signal.SIGINT)
    return "failed", f"{type(exc).__name__}: {exc}", 0


class RankFailed(RuntimeError):
    """Another rank failed while running (exit 1 here too); its own log has the traceback."""


def _rebuilt(verdict: tuple[str, str, int], rank: int) -> BaseException:
    kind, message, signum = verdict
    if kind == "bad_input":
        return BadInput(message)
    if kind == "locked":
        return LockHeld(message)
    if kind == "interrupted":
        return Interrupted(signum)
    return RankFailed(f"rank {rank} failed: {message}")


def _gather(value: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def largest(value: int) -> int:
    """The largest of `value` over the ranks (itself when alone). How ranks stop training at the
    same step: a signal reaches them at slightly different times, so they share its number."""
    import torch
    import torch.distributed as dist

    if not (ranks().many and dist.is_available() and dist.is_initialized()):
        return value
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    shared = torch.tensor([value], device=device)
    dist.all_reduce(shared, op=dist.ReduceOp.MAX)
    return int(shared.item())


def fit_trainer(trainer: Any) -> None:
    """Right before `trainer.train()` with several ranks, two fixes that make N processes train
    as one does (transformers 5.23 / accelerate 1.15):

    - An evaluation before training (the test split "before") marks the model as prepared in
      evaluation mode, and `train()` then never wraps it in DistributedDataParallel: each rank
      would silently train its own copy. The mark goes, so that `train()` wraps it.
    - The Trainer multiplies each rank's loss by the world size when the model takes loss
      keyword arguments, expecting a loss divided by the item count of all ranks (causal LMs'
      is). A sequence classifier takes them but ignores the count, and so do the heads' own
      losses: their gradients would be world-size times too large and clipped differently.
    """
    from torch.nn.parallel import DistributedDataParallel
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not ranks().many:
        return
    model = trainer.model
    wrapped = isinstance(trainer.model_wrapped, DistributedDataParallel)
    if getattr(model, "_is_accelerate_prepared", False) and not wrapped and not _sharded(trainer):
        model._is_accelerate_prepared = False
        trainer.accelerator._models = [m for m in trainer.accelerator._models if m is not model]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(base).__name__ not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        trainer.args.average_tokens_across_devices = False


def _sharded(trainer: Any) -> bool:
    """FSDP and DeepSpeed prepare the model fully even for an evaluation: nothing to undo."""
    return bool(getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False))


@contextmanager
def written_by_main(path: Path) -> Iterator[Path]:
    """`path` on rank 0; on the other ranks a throwaway folder, deleted afterwards. For the
    job's save and report steps, which must run on every rank (they may evaluate: a collective)
    but whose files only rank 0 keeps."""
    if is_main():
        yield path
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"llmtune-rank{ranks().rank}-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check(recipe: Any) -> None:
    """What several ranks need from the recipe, checked on every rank before anything is
    written: a global batch that the ranks can share evenly, and DeepSpeed installed."""
    world = ranks()
    settings = getattr(recipe, "distributed", None)
    if not world.many or settings is None:
        return
    where = {"file": str(recipe.source) if getattr(recipe, "source", None) else None}
    batch = recipe.training.batch_size
    if batch % world.world_size:
        raise BadInput(
            f"training.batch_size is the global batch ({batch} rows per step over all ranks); "
            f"{world.world_size} ranks cannot share it evenly: make it a multiple of {world.world_size}",
            key="training.batch_size",
            **where,
        )
    if settings.strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise BadInput(
                "strategy deepspeed needs the deepspeed package: pip install deepspeed",
                key="distributed.strategy",
                **where,
            )


def trainer_arguments(batch_size: int) -> dict[str, Any]:
    """TrainingArguments keys for the current run's ranks: none for one process; for several,
    the per-rank share of the global batch and the strategy's settings."""
    world = ranks()
    settings = _settings.get()
    if not world.many or settings is None:
        return {}
    per_rank = max(1, batch_size // world.world_size)
    out: dict[str, Any] = {
        "per_device_train_batch_size": per_rank,
        "per_device_eval_batch_size": per_rank,
        "ddp_backend": None if settings.backend == "auto" else settings.backend,
    }
    return out | strategy_arguments(settings)


def strategy_arguments(settings: Distributed) -> dict[str, Any]:
    """The TrainingArguments keys of one strategy (ddp, fsdp or deepspeed)."""
    if settings.strategy == "fsdp":
        return {"fsdp": True, "fsdp_config": fsdp_config(settings.fsdp)}
    if settings.strategy == "deepspeed":
        return {"deepspeed": deepspeed_config(settings.deepspeed)}
    return {"ddp_find_unused_parameters": settings.find_unused_parameters}


def fsdp_config(fsdp: Fsdp) -> dict[str, Any]:
    """TrainingArguments' fsdp_config. Wrapping by transformer layer names no classes:
    accelerate takes the model's own `_no_split_modules` (LlamaDecoderLayer, BertLayer...)."""
    config: dict[str, Any] = {
        "version": fsdp.version,
        "cpu_offload": fsdp.cpu_offload,
        "activation_checkpointing": fsdp.activation_checkpointing,
        "state_dict_type": "FULL_STATE_DICT",  # model/ stays one plain HF folder
    }
    if fsdp.wrap == "size":
        config |= {"auto_wrap_policy": "SIZE_BASED_WRAP", "min_num_params": fsdp.min_num_params}
    else:
        config["auto_wrap_policy"] = "TRANSFORMER_BASED_WRAP"
    # FSDP2 says sharding as "free the gathered parameters after forward" (full_shard) or not
    # (shard_grad_op); FSDP1 takes the strategy's name
    config["reshard_after_forward"] = fsdp.sharding == "full_shard" if fsdp.version == 2 else fsdp.sharding
    return config


def deepspeed_config(deepspeed: DeepSpeed) -> dict[str, Any]:
    """A DeepSpeed config for TrainingArguments(deepspeed=...): the ZeRO stage and offload from
    the recipe; "auto" lets the HF integration fill batch sizes, clipping and precision from the
    training arguments, so the recipe's `training:` section stays the one source of them."""
    zero: dict[str, Any] = {"stage": deepspeed.stage}
    if deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if deepspeed.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "zero_optimization": zero,
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
    }


def manifest_fields(recipe: Any) -> dict[str, Any]:
    """What the manifest records about the ranks: world size, and the strategy when it applied."""
    world = ranks()
    settings = getattr(recipe, "distributed", None)
    strategy = settings.strategy if world.many and settings is not None else None
    return {"world_size": world.world_size, "strategy": strategy}
