"""Launch commands for a serving deployment: vLLM, SGLang and TensorRT-LLM (`trtllm-serve`).

Written for the engine versions named in `ENGINE_VERSIONS`; flags change between releases, so every
command carries that note. Replicas are separate server processes (one per instance) behind a load
balancer, except vLLM/SGLang data parallelism, which one command starts.
"""

from __future__ import annotations

from meshplan.serve.deployment import Deployment

ENGINE_VERSIONS = {"vllm": "vLLM 0.11", "sglang": "SGLang 0.5", "trtllm": "TensorRT-LLM 1.0 (trtllm-serve, PyTorch backend)"}

_QUANT = {"fp8": "fp8", "fp4": "modelopt_fp4"}  # vLLM --quantization values for on-the-fly / ModelOpt checkpoints


def vllm_command(hf_id: str, d: Deployment) -> str:
    parts = [f"vllm serve {hf_id}", f"--tensor-parallel-size {d.tp}", f"--pipeline-parallel-size {d.pp}"]
    if d.attn_dp > 1:
        parts += [f"--data-parallel-size {d.attn_dp}", "--enable-expert-parallel"]
    elif d.ep > 1:
        parts.append("--enable-expert-parallel")
    if d.replicas > 1 and d.attn_dp == 1:
        parts.append(f"--data-parallel-size {d.replicas}")
    parts += [f"--max-num-seqs {d.max_batch}", f"--max-num-batched-tokens {d.chunk_tokens}", "--enable-chunked-prefill"]
    if d.precision in _QUANT:
        parts.append(f"--quantization {_QUANT[d.precision]}")
    else:
        parts.append(f"--dtype {'bfloat16' if d.precision == 'bf16' else 'float16'}")
    if d.kv_dtype == "fp8":
        parts.append("--kv-cache-dtype fp8")
    return " \\\n    ".join(parts)


def sglang_command(hf_id: str, d: Deployment) -> str:
    parts = [f"python -m sglang.launch_server --model-path {hf_id}", f"--tp-size {d.tp * d.attn_dp}",
             f"--pp-size {d.pp}"]
    if d.attn_dp > 1:
        parts += [f"--dp-size {d.attn_dp}", "--enable-dp-attention"]
    if d.ep > 1:
        parts.append(f"--ep-size {d.ep}")
    notes = []
    if d.replicas > 1:
        if d.attn_dp == 1:
            parts.append(f"--dp-size {d.replicas}")
        else:
            notes.append(f"# x{d.replicas}: one server per replica, behind a load balancer\n")
    parts += [f"--max-running-requests {d.max_batch}", f"--chunked-prefill-size {d.chunk_tokens}"]
    if d.precision in ("fp8", "fp4"):
        parts.append(f"--quantization {'fp8' if d.precision == 'fp8' else 'modelopt_fp4'}")
    if d.kv_dtype == "fp8":
        parts.append("--kv-cache-dtype fp8_e4m3")
    return "".join(notes) + " \\\n    ".join(parts)


def trtllm_command(hf_id: str, d: Deployment) -> str:
    parts = [f"trtllm-serve {hf_id}", "--backend pytorch", f"--tp_size {d.tp * d.attn_dp}", f"--pp_size {d.pp}"]
    if d.ep > 1:
        parts.append(f"--ep_size {d.ep}")
    parts += [f"--max_batch_size {d.max_batch}", f"--max_num_tokens {d.chunk_tokens}"]
    options = []
    if d.attn_dp > 1:
        options.append("enable_attention_dp: true")
    if d.kv_dtype == "fp8":
        options.append("kv_cache_config: {dtype: fp8}")
    options.append("enable_chunked_prefill: true")
    joined = "\\n".join(options)
    parts.append(f"--extra_llm_api_options <(printf '{joined}')")
    notes = []
    if d.precision in ("fp8", "fp4"):
        notes.append(f"# weights: a ModelOpt {d.precision.upper()} checkpoint of the model (quantisation is in the checkpoint)\n")
    if d.replicas > 1:
        notes.append(f"# x{d.replicas}: one server per replica (CUDA_VISIBLE_DEVICES slices), behind a load balancer\n")
    return "".join(notes) + " \\\n    ".join(parts)


def launch_commands(hf_id: str, d: Deployment) -> dict[str, str]:
    """Commands per engine, each headed by the engine version it was written for."""
    return {
        "vllm": f"# written for {ENGINE_VERSIONS['vllm']}\n" + vllm_command(hf_id, d),
        "sglang": f"# written for {ENGINE_VERSIONS['sglang']}\n" + sglang_command(hf_id, d),
        "trtllm": f"# written for {ENGINE_VERSIONS['trtllm']}\n" + trtllm_command(hf_id, d),
    }


HF_IDS = {
    "Llama-2-70B": "meta-llama/Llama-2-70b-chat-hf", "Llama-3.1-8B": "meta-llama/Llama-3.1-8B-Instruct",
    "Llama-3.1-70B": "meta-llama/Llama-3.1-70B-Instruct", "Llama-3.3-70B": "meta-llama/Llama-3.3-70B-Instruct",
    "Llama-3.1-405B": "meta-llama/Llama-3.1-405B-Instruct", "Mistral-7B": "mistralai/Mistral-7B-v0.1",
    "Qwen3-32B": "Qwen/Qwen3-32B", "Qwen3-235B-A22B": "Qwen/Qwen3-235B-A22B", "Qwen3-30B-A3B": "Qwen/Qwen3-30B-A3B",
    "DeepSeek-R1": "deepseek-ai/DeepSeek-R1", "gpt-oss-120b": "openai/gpt-oss-120b",
    "Llama-4-Scout-17B-16E": "meta-llama/Llama-4-Scout-17B-16E-Instruct", "Mixtral-8x7B": "mistralai/Mixtral-8x7B-v0.1",
}


def hf_id_for(model_name: str) -> str:
    return HF_IDS.get(model_name, model_name)
