"""Serving engines meshplan knows: their scheduler defaults (batch limit, tokens per iteration)."""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("trtllm", "vllm", "sglang", "unknown")


@dataclass(frozen=True)
class EngineDefaults:
    max_batch: int
    """Sequences in flight per instance when the user sets none."""
    chunk_tokens: int
    """Tokens per scheduler iteration (chunked-prefill budget)."""
    source: str


DEFAULTS = {
    # trtllm-serve: --max_batch_size 256, --max_num_tokens 8192 (its command-line defaults).
    "trtllm": EngineDefaults(256, 8192, "trtllm-serve defaults: max_batch_size=256, max_num_tokens=8192"),
    # vLLM V1 API server on GPUs with >= 70 GiB other than A100: max_num_seqs 1024, max_num_batched_tokens 8192
    # (vllm/engine/arg_utils.py, EngineArgs.get_batch_defaults; 256 and 2048 on smaller GPUs and A100).
    "vllm": EngineDefaults(1024, 8192, "vLLM V1 API server on >=70 GiB GPUs: max_num_seqs=1024, "
                                       "max_num_batched_tokens=8192"),
    # SGLang: --max-running-requests derived from the KV pool; --chunked-prefill-size 8192 on large GPUs.
    "sglang": EngineDefaults(1024, 8192, "SGLang server args: chunked_prefill_size=8192, running requests from KV pool"),
    "unknown": EngineDefaults(256, 8192, "assumed vLLM-like defaults"),
}

# TensorRT-LLM run without trtllm-serve schedules as many requests as its build allows: BuildConfig's defaults,
# max_batch_size 2048 and max_num_tokens 8192 (trtllm-bench's offline throughput runs size it for the workload
# up to that; the Triton backend of 0.14 and earlier serves the built engine); the KV cache usually binds first.
ENGINE_BUILD = EngineDefaults(2048, 8192, "TensorRT-LLM without trtllm-serve (trtllm-bench, Triton backend): "
                                          "BuildConfig max_batch_size=2048, max_num_tokens=8192")
