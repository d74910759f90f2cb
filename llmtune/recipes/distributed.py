"""The `distributed:` section of training recipes: how `torchrun` / `accelerate launch` ranks
share the work. Read only when the job runs with more than one process (WORLD_SIZE > 1); a
single process ignores it. `training.batch_size` stays the global batch: each of N ranks takes
batch_size / N rows per step, so one recipe makes the same optimizer steps on 1 or N processes
(llmtune.runs.distributed maps this section to HF TrainingArguments)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmtune.recipes.common import Section


class Fsdp(Section):
    """Fully sharded data parallel (torch FSDP through accelerate)."""

    version: Literal[1, 2] = 2
    """FSDP2 (per-parameter sharding, torch's fully_shard) or the older FSDP1."""
    sharding: Literal["full_shard", "shard_grad_op", "hybrid_shard", "no_shard"] = "full_shard"
    """What is sharded across ranks: parameters, gradients and optimizer state (full_shard), only
    gradients and optimizer state (shard_grad_op), full within a node (hybrid_shard), nothing
    (no_shard). FSDP2 offers full_shard and shard_grad_op; the other two need version: 1."""
    wrap: Literal["transformer_layer", "size"] = "transformer_layer"
    """Shard unit: each transformer block (the model's _no_split_modules), or by parameter count."""
    min_num_params: int = Field(100_000_000, ge=1)
    """wrap: size — parameters per shard unit at least."""
    cpu_offload: bool = False
    """Keep parameters on the CPU between uses (slower, fits larger models)."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""

    @model_validator(mode="after")
    def _fsdp2_sharding(self) -> Fsdp:
        if self.version == 2 and self.sharding not in ("full_shard", "shard_grad_op"):
            raise ValueError(
                f"sharding {self.sharding} needs version: 1 (FSDP2 offers full_shard, shard_grad_op)"
            )
        return self


class DeepSpeed(Section):
    """DeepSpeed ZeRO (needs the deepspeed package)."""

    stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also parameters."""
    offload_optimizer: bool = False
    """Optimizer state on the CPU (ZeRO-Offload)."""
    offload_params: bool = False
    """Parameters on the CPU (stage 3 only)."""

    @model_validator(mode="after")
    def _params_offload_needs_stage3(self) -> DeepSpeed:
        if self.offload_params and self.stage != 3:
            raise ValueError("offload_params needs stage: 3 (only ZeRO-3 partitions the parameters)")
        return self


class Distributed(Section):
    """How data-parallel ranks share the work under torchrun / accelerate launch."""

    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    """ddp: every rank holds the whole model; fsdp: parameters sharded (torch FSDP);
    deepspeed: DeepSpeed ZeRO."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend: auto is nccl on CUDA GPUs, gloo on CPU."""
    find_unused_parameters: bool | None = None
    """ddp: look for parameters that get no gradient (some adapters); default: HF Trainer's rule."""
    fsdp: Fsdp = Field(default_factory=Fsdp)
    """strategy: fsdp settings."""
    deepspeed: DeepSpeed = Field(default_factory=DeepSpeed)
    """strategy: deepspeed settings."""
