"""Recipe sections that choose and configure an inference engine (`engine:`, `ray:`, `vllm:`).

`engine: hf` is transformers in this process; `vllm` is vLLM's offline `LLM` (the optional
extra `llmtune[vllm]`); `ray` runs `hf` model replicas in a Ray Data actor pool (bulk-infer only;
the optional extra `llmtune[ray]`); `onnx` is ONNX Runtime on an exported model (`llmtune[onnx]`);
`llamacpp` is llama.cpp on a GGUF file (`llmtune[llamacpp]`). Every engine writes the same rows
with the same guarantees.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmtune.recipes.common import Section

EngineName = Literal["hf", "vllm", "ray", "onnx", "llamacpp"]


class RaySettings(Section):
    """Where and how wide a Ray Data job runs (engine: ray). This process stays the only writer
    of the output: it sends Ray the rows not yet in the output and journals each result batch as
    it returns, so resume, exactly-once, the lock and the errors file work as with engine hf."""

    address: str | None = None
    """A running Ray cluster to join (e.g. auto, or ray://head:10001; every node needs llmtune,
    the model and the same Python); null starts a private local Ray for this job (no dashboard,
    its own temp folder) and stops it at the end."""
    replicas: int = Field(2, ge=1)
    """Model replicas in the actor pool (one process each; each loads the model once)."""
    cpus_per_replica: float = Field(1.0, gt=0)
    """CPUs Ray reserves for each replica; with model.threads: auto a replica runs this many torch
    threads (whole ones, at least 1). A local Ray gets replicas x cpus_per_replica CPUs."""
    gpus_per_replica: float = Field(0.0, ge=0)
    """GPUs Ray reserves for each replica (0 on CPU machines; 0.5 puts two replicas on a GPU)."""
    batch_rows: int = Field(64, ge=1)
    """Rows Ray hands to a replica at a time (batching.chunk_rows is engine hf's); each batch's
    results are journaled as it returns, so a killed job loses at most the batches in flight."""


class VllmSettings(Section):
    """Settings passed to vLLM's offline `LLM` (engine: vllm). Decoding settings come from the
    recipe (as with engine: hf); vLLM's CPU build needs a head size (hidden / heads) of 32 or more."""

    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs one model is split across."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """Share of each GPU's memory vLLM may take (weights + KV cache); unused on CPU."""
    max_num_seqs: int | None = Field(None, ge=1)
    """Sequences decoded together at most; default: vLLM's."""
    max_model_len: int | None = Field(None, ge=16)
    """Context length vLLM plans its KV cache for; default: max_length + max_new_tokens."""
    enforce_eager: bool = False
    """Skip CUDA graphs / torch.compile (faster start, slower steady state)."""
    cpu_kv_cache_gb: float = Field(4.0, gt=0)
    """On CPU: GiB reserved for the KV cache, rounded up to whole GiB (vLLM's
    VLLM_CPU_KVCACHE_SPACE; an exported VLLM_CPU_KVCACHE_SPACE wins)."""
