"""Published, measured serving runs as meshplan specs.

Reads `meshplan/data/published/serving-runs.csv` (a verbatim copy of `published-serving-runs.csv` from the
project's shared reference data; its README gives the conventions) and turns every row whose model has a preset
and whose layout is consistent into a `PublishedServingRun`: model, GPU, the layout of one engine instance
(`tp, pp, ep, attn_dp`) and its `replicas`, precision and KV-cache dtype, the workload (fixed ISL/OSL with a
closed-loop concurrency or an offered request rate) and the measured TTFT, TPOT and output throughput.
Gaps are filled per source family from what that source documents, and every value filled that way is written
into the run's `notes`. Rows that cannot be used come back as `SkippedServingRow`s with the reason.

Source families (by id prefix) and how each one counts GPUs:
- `trtllm-0.17` (`trt017-`): TensorRT-LLM 0.17 perf-overview throughput table, trtllm-bench offline runs
  (all requests at once, `request_rate = inf`). One engine, TP only: num_gpus = tp·pp. MoE rows (Mixtral):
  EP not stated, the TensorRT engine default (experts tensor-parallel, ep 1) is used.
- `trtllm-pytorch` (`trt10-`): the later perf-overview tables, PyTorch backend, offline. The table's "TP" is
  the engine's world size. Dense rows: num_gpus = tp·pp. MoE rows: the doc's MoE command passes
  `--ep $ep_size` with `enable_attention_dp: true` but no EP size per table cell; they are loaded as that recipe
  (attention data-parallel over the world size: tp 1, attn_dp = world size, ep = world size) and marked
  UNCERTAIN.
- `trtllm-0.14-online` (`trt014on-`): TensorRT-LLM 0.14 online-serving table through the Triton backend,
  offered request rates (2/8/32/inf req/s); TPOT holds the table's mean ITL. num_gpus = tp·pp.
- `aiconfigurator-<engine>` (`aic-agg-`): AIConfigurator's measured sample (trtllm, vllm, sglang), fixed
  concurrency, one aggregated engine instance. `tp` is the attention TP and `ep` the expert-parallel size, so
  num_gpus = tp·pp·attn_dp, and the MoE layer splits the same tp·attn_dp GPUs as moe_tp·moe_ep (checked against
  the `moe_tp=…, moe_ep=…` the notes record). An unrecorded attention_dp is 1 (it follows from num_gpus).
- `splitwise` (`splitwise-`): splitwise-sim's measured static-batch profiles of Llama-2-70B (engine not
  stated: UNCERTAIN); concurrency = batch size. num_gpus = tp·pp.

One rule covers every family: num_gpus == tp·pp·attn_dp·replicas (attn_dp 1 and replicas 1 where the source has
no attention DP or no replicas), and the expert-parallel size divides the GPUs of one pipeline stage
(ep | tp·attn_dp; ep 1 for dense models). Rows that break it are skipped, as are disaggregated rows
(prefill/decode workers), rows whose model has no preset, rows without a workload or without any measured figure,
and rows whose per-GPU throughput disagrees with total / num_gpus by more than 0.1 %.

Notes also say where a preset lacks an attention feature of its model (Mistral-7B's sliding window, Llama-4-Scout's
chunked attention, gpt-oss's 128-token sliding window and sinks): exact when isl+osl fits in the window, else the
note starts 'APPROX model' (the preset overstates those layers' KV cache and attention cost).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from meshplan.calibrate.csvdata import published_rows
from meshplan.errors import PlanError
from meshplan.specs.catalog import load_gpu, model_catalog
from meshplan.specs.gpu import GpuSpec
from meshplan.specs.model import ModelSpec

__all__ = ["PublishedServingRun", "SkippedServingRow", "load_published_serving_runs"]

PRECISIONS = ("fp16", "bf16", "fp8", "fp4")
KV_DTYPES = ("fp16", "bf16", "fp8")
ENGINES = ("trtllm", "vllm", "sglang", "unknown")


@dataclass(frozen=True)
class PublishedServingRun:
    """One published serving measurement with its exact deployment layout."""

    id: str
    source_group: str
    """Source family: 'trtllm-0.17', 'trtllm-pytorch', 'trtllm-0.14-online', 'aiconfigurator-trtllm',
    'aiconfigurator-vllm', 'aiconfigurator-sglang' or 'splitwise'."""
    engine: str
    """'trtllm', 'vllm', 'sglang' or 'unknown' (the source does not say); the source's wording is in `notes`
    when it differs (e.g. 'trtllm (Triton backend)')."""
    engine_version: str
    """As the source recorded it; '' when it records none (see `notes`)."""
    model: ModelSpec
    gpu: GpuSpec
    num_gpus: int
    """All GPUs of the deployment: tp·pp·attn_dp·replicas."""
    tp: int
    """Tensor parallelism of one engine instance; for MoE rows with attention DP, the attention TP."""
    pp: int
    ep: int
    """Expert-parallel size of the MoE layers (1 for dense models; moe_tp = tp·attn_dp / ep)."""
    attn_dp: int
    """Attention data-parallel ranks inside one engine instance."""
    replicas: int
    """Independent copies of the engine instance."""
    precision: str
    """Weights/compute precision: 'fp16' | 'bf16' | 'fp8' | 'fp4' (as the source labels it)."""
    kv_dtype: str
    """KV-cache dtype: 'fp16' | 'bf16' | 'fp8' (filled per engine when the source gives none; see `notes`)."""
    isl: int
    osl: int
    concurrency: int | None
    """Closed loop: requests in flight (static batch size for splitwise); None for rate-driven rows."""
    request_rate: float | None
    """Offered requests/s; math.inf = all requests issued at once (offline maximum throughput)."""
    measured_ttft_ms: float | None
    """Time to first token (includes queueing behind other requests in flight)."""
    measured_tpot_ms: float | None
    """Time per output token, excluding the first token."""
    measured_output_tokens_per_s_total: float | None
    """Generated tokens per second of the whole deployment."""
    measured_output_tokens_per_s_per_gpu: float | None
    """total / num_gpus."""
    notes: str
    """The assumptions made for this row; contains 'UNCERTAIN' where the source row says so or the layout is
    not documented per row."""
    checkpoint_precision: str | None = None
    """'fp8' | 'fp4' when the row names a pre-quantized checkpoint (model-name suffix or HF id), else None."""
    hf_model_id: str = ""
    """The checkpoint's Hugging Face id as recorded ('' when not recorded)."""

    @property
    def uncertain(self) -> bool:
        return "UNCERTAIN" in self.notes

    @property
    def offline(self) -> bool:
        """All requests issued at once (offline maximum-throughput run)."""
        return self.request_rate is not None and math.isinf(self.request_rate)


@dataclass(frozen=True)
class SkippedServingRow:
    """A row that could not be turned into a run, and why."""

    id: str
    reason: str


# --- row helpers ---------------------------------------------------------------------------------------------
def _text(row: dict[str, str], key: str) -> str:
    return (row.get(key) or "").strip()


def _int(row: dict[str, str], key: str) -> int | None:
    text = _text(row, key)
    if not text:
        return None
    value = float(text)
    if not value.is_integer():
        raise PlanError(f"column {key}={text!r} is not an integer")
    return int(value)


def _float(row: dict[str, str], key: str) -> float | None:
    text = _text(row, key)
    if not text:
        return None
    if text.lower() in ("inf", "infinity"):
        return math.inf
    return float(text)


_GROUP_PREFIXES = (
    ("trt017-", "trtllm-0.17"),
    ("trt10-", "trtllm-pytorch"),
    ("trt014on-", "trtllm-0.14-online"),
    ("splitwise-", "splitwise"),
)


def _group(run_id: str, engine: str) -> str | None:
    for prefix, group in _GROUP_PREFIXES:
        if run_id.startswith(prefix):
            return group
    if run_id.startswith("aic-"):
        return f"aiconfigurator-{engine}" if engine in ("trtllm", "vllm", "sglang") else None
    return None


def _engine(row: dict[str, str], notes: list[str]) -> str:
    text = _text(row, "engine")
    lower = text.lower()
    if not text:
        notes.append("engine not stated by the source")
        return "unknown"
    for engine in ("trtllm", "vllm", "sglang"):
        if lower == engine:
            return engine
        if lower.startswith(engine):
            notes.append(f"engine as recorded: {text!r}")
            return engine
    raise PlanError(f"unknown engine {text!r} (known: trtllm, vllm, sglang)")


# Model names of the CSV -> preset names: a trailing parenthetical names the checkpoint, '-Instruct' is dropped.
_PAREN = re.compile(r"\s*\(([^)]*)\)\s*$")
_CKPT_PRECISION = re.compile(r"(?:^|[-_ ])(NVFP4|FP4|FP8)(?:$|[-_ ])", re.IGNORECASE)


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


def _model(row: dict[str, str], notes: list[str]) -> tuple[ModelSpec | None, str, str | None]:
    """(preset or None, the preset name looked up, checkpoint precision or None)."""
    name = _text(row, "model")
    checkpoint: str | None = None
    label = ""
    match = _PAREN.search(name)
    if match:
        label = match.group(1)
        name = name[: match.start()]
        found = _CKPT_PRECISION.search(label)
        if found:
            checkpoint = "fp4" if "4" in found.group(1) else "fp8"
    if name.endswith("-Instruct"):
        name = name.removesuffix("-Instruct")
        notes.append("instruct checkpoint (same architecture as the base model)")
    hf_id = _text(row, "hf_model_id")
    if hf_id and checkpoint is None:
        found = _CKPT_PRECISION.search(hf_id.rsplit("/", 1)[-1])
        if found:
            checkpoint = "fp4" if "4" in found.group(1) else "fp8"
    if checkpoint or label:
        where = ", ".join(x for x in (label, hf_id) if x)
        notes.append(f"checkpoint precision {checkpoint or 'not stated'} ({where})")
    by_key = {_key(n): m for n, m in model_catalog().items()}
    return by_key.get(_key(name)), name, checkpoint


_GPUS = {
    "H100-SXM-80GB": "H100-SXM",
    "H200-SXM-141GB": "H200",
    "B200-SXM": "B200",
    "A100-SXM-80GB": "A100-80GB",
}


def _gpu(text: str) -> GpuSpec:
    return load_gpu(_GPUS.get(text, text))


def _kv_dtype(row: dict[str, str], group: str, engine: str, precision: str, notes: list[str]) -> str:
    text = _text(row, "kv_dtype").lower()
    if text:
        if text not in KV_DTYPES:
            raise PlanError(f"kv_dtype {text!r} is not one of {', '.join(KV_DTYPES)}")
        return text
    if precision in ("fp16", "bf16"):
        notes.append(f"kv_dtype {precision} assumed (not stated; unquantized model, KV cache in the model dtype)")
        return precision
    if engine in ("vllm", "sglang") and "source_file=nvidia_" in _text(row, "notes"):
        # NVIDIA's ModelOpt checkpoints (nvidia/*-FP8) carry kv_cache_quant_algo FP8, which vLLM's and SGLang's
        # kv-cache dtype 'auto' loads (vllm-project/vllm PR #29980). A bf16 cache also cannot give these rows'
        # TPOT: reading it alone would take most of the measured step at the datasheet bandwidth.
        notes.append("kv_dtype fp8 assumed (not stated; NVIDIA ModelOpt checkpoint with kv_cache_quant_algo FP8, "
                     "which the engine's kv-cache dtype 'auto' loads)")
        return "fp8"
    if engine in ("vllm", "sglang"):
        notes.append("kv_dtype bf16 assumed (not stated; the engine's default kv-cache dtype 'auto' keeps the "
                     "model dtype, no --kv-cache-dtype recorded)")
        return "bf16"
    if group == "trtllm-pytorch":
        notes.append("kv_dtype fp8 assumed (not stated; NVIDIA ModelOpt FP8/FP4 checkpoints carry "
                     "kv_cache_quant_algo FP8, which the PyTorch backend's KV dtype 'auto' inherits)")
    else:
        notes.append(f"kv_dtype fp8 assumed (not stated; {precision} TensorRT-LLM deployment, FP8 KV cache assumed)")
    return "fp8"


# Attention features of a preset that ModelSpec does not represent: (window in tokens, what it is).
_UNMODELLED_ATTENTION = {
    "Llama-4-Scout-17B-16E": (8192, "Llama-4 chunked attention (8192-token chunks) on 3 of every 4 layers"),
}
"""Attention patterns the presets do not model (sliding windows are modelled: `ModelSpec.sliding_window`)."""


def _attention_note(model: ModelSpec, isl: int, osl: int) -> str | None:
    if model.sliding_window_layers:
        return (f"sliding-window attention ({model.sliding_window} tokens) on {model.sliding_window_layers} of "
                f"{model.num_layers} layers, modelled")
    if model.name not in _UNMODELLED_ATTENTION:
        return None
    window, what = _UNMODELLED_ATTENTION[model.name]
    if isl + osl <= window:
        return f"{what} is not in ModelSpec, but isl+osl = {isl + osl} <= {window}, so full attention is exact here"
    return (f"APPROX model: {what} is not in ModelSpec and isl+osl = {isl + osl} > {window}: the preset "
            "overstates those layers' KV cache and attention cost")


_MOE_SPLIT = re.compile(r"moe_tp=(\d+), moe_ep=(\d+)")


def _load_row(row: dict[str, str]) -> PublishedServingRun | SkippedServingRow:
    run_id = _text(row, "id")
    notes: list[str] = []
    if "UNCERTAIN" in row.get("notes", ""):
        notes.append("UNCERTAIN (source notes)")
    try:
        engine = _engine(row, notes)
    except PlanError as exc:
        return SkippedServingRow(run_id, str(exc))
    group = _group(run_id, engine)
    if group is None:
        return SkippedServingRow(run_id, f"no source family known for id {run_id!r} (engine {engine!r})")

    if _text(row, "disagg") not in ("", "0") or _int(row, "prefill_workers") or _int(row, "decode_workers"):
        return SkippedServingRow(run_id, "disaggregated prefill/decode deployment: not modelled (aggregated only)")

    model, model_name, checkpoint = _model(row, notes)
    if model is None:
        return SkippedServingRow(run_id, f"no model preset for {model_name!r} (row model {_text(row, 'model')!r})")
    try:
        gpu = _gpu(_text(row, "gpu"))
    except PlanError as exc:
        return SkippedServingRow(run_id, str(exc))

    precision = _text(row, "precision").lower()
    if precision not in PRECISIONS:
        return SkippedServingRow(run_id, f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision not in gpu.peak_flops:
        notes.append(f"precision label {precision} as recorded; {gpu.name} has no {precision} tensor cores "
                     "(weights stored in it, compute in a wider type)")
    try:
        kv_dtype = _kv_dtype(row, group, engine, precision, notes)
        num_gpus, tp, pp = _int(row, "num_gpus"), _int(row, "tp"), _int(row, "pp")
        ep, attn_dp, replicas = _int(row, "ep"), _int(row, "attn_dp"), _int(row, "replicas")
        isl, osl, concurrency = _int(row, "isl"), _int(row, "osl"), _int(row, "concurrency")
    except (PlanError, ValueError) as exc:
        return SkippedServingRow(run_id, f"unreadable column: {exc}")
    if num_gpus is None or tp is None:
        return SkippedServingRow(run_id, "layout missing: num_gpus and tp are required")
    if pp is None:
        pp = 1
        notes.append("pp 1 (not stated)")
    if replicas is None:
        replicas = 1
        notes.append("replicas 1 (not stated)")

    # --- layout per source family ---------------------------------------------------------------------
    if group == "trtllm-pytorch" and model.is_moe and ep is None and attn_dp is None and tp > 1:
        world = tp
        tp, ep, attn_dp = 1, world, world
        notes.append(f"UNCERTAIN layout: the table gives TP {world} only; the doc's MoE command passes --ep "
                     "with enable_attention_dp: true but no EP size per cell -> loaded as attention DP "
                     f"{world} (attention tp 1) with ep {world}")
    if ep is None:
        ep = 1
        if model.is_moe:
            if group == "trtllm-0.17":
                notes.append("ep 1: EP not stated, TensorRT engine default (experts tensor-parallel)")
            else:
                notes.append("ep 1 (not stated): experts tensor-parallel")
    if attn_dp is None:
        attn_dp = 1
        if group.startswith("aiconfigurator") and model.is_moe:
            notes.append("attn_dp 1: attention_dp not recorded; follows from num_gpus = tp*pp*attn_dp")
    if not model.is_moe and ep != 1:
        return SkippedServingRow(run_id, f"ep={ep} given for the dense model {model.name}")

    expected = tp * pp * attn_dp * replicas
    if num_gpus != expected:
        return SkippedServingRow(
            run_id, f"num_gpus={num_gpus} != tp*pp*attn_dp*replicas = {tp}*{pp}*{attn_dp}*{replicas} = {expected}")
    if (tp * attn_dp) % ep:
        return SkippedServingRow(run_id, f"ep={ep} does not divide the {tp * attn_dp} GPUs (tp*attn_dp) of a stage")
    if model.is_moe and model.num_experts % ep:
        return SkippedServingRow(run_id, f"ep={ep} does not divide the {model.num_experts} experts of {model.name}")
    if model.num_heads % tp:
        return SkippedServingRow(
            run_id, f"tp={tp} does not divide the {model.num_heads} attention heads of {model.name}")
    if model.num_layers < pp:
        return SkippedServingRow(run_id, f"pp={pp} exceeds the {model.num_layers} layers of {model.name}")
    split = _MOE_SPLIT.search(row.get("notes", ""))
    if model.is_moe and split:
        moe_tp, moe_ep = int(split.group(1)), int(split.group(2))
        if moe_ep != ep or moe_tp * moe_ep != tp * attn_dp:
            return SkippedServingRow(
                run_id, f"notes give moe_tp={moe_tp}, moe_ep={moe_ep}, inconsistent with tp={tp}, attn_dp={attn_dp}, "
                f"ep={ep} (moe_tp*moe_ep must equal tp*attn_dp and moe_ep equal ep)")

    # --- workload -------------------------------------------------------------------------------------------
    try:
        request_rate = _float(row, "request_rate")
    except ValueError as exc:
        return SkippedServingRow(run_id, f"unreadable request_rate: {exc}")
    if isl is None or osl is None or isl <= 0 or osl <= 0:
        return SkippedServingRow(run_id, "isl/osl missing or not positive")
    if concurrency is None and request_rate is None:
        return SkippedServingRow(run_id, "workload missing: neither concurrency nor request_rate given")
    if (concurrency is not None and concurrency <= 0) or (request_rate is not None and request_rate <= 0):
        return SkippedServingRow(run_id, "concurrency/request_rate must be positive")
    if group == "trtllm-0.17" or group == "trtllm-pytorch":
        notes.append("offline trtllm-bench run: in-flight requests bounded by the engine's max batch / KV capacity")
    elif group == "trtllm-0.14-online":
        notes.append("TPOT = the table's mean ITL; TTFT includes queueing (arrival process not stated)")
    elif group == "splitwise":
        notes.append("static batch: concurrency = batch size, TTFT = whole-batch prompt time")

    # --- measured figures -----------------------------------------------------------------------------------
    try:
        ttft, tpot = _float(row, "measured_ttft_ms"), _float(row, "measured_tpot_ms")
        total = _float(row, "measured_output_tokens_per_s_total")
        per_gpu = _float(row, "measured_output_tokens_per_s_per_gpu")
    except ValueError as exc:
        return SkippedServingRow(run_id, f"unreadable measured figure: {exc}")
    if ttft is None and tpot is None and total is None and per_gpu is None:
        return SkippedServingRow(run_id, "no measured TTFT, TPOT or throughput")
    if total is not None:
        derived = total / num_gpus
        if per_gpu is None:
            per_gpu = derived
            notes.append("per-GPU throughput derived = total / num_gpus")
        elif abs(per_gpu - derived) > 1e-3 * derived:
            return SkippedServingRow(
                run_id, f"per-GPU throughput {per_gpu} != total/num_gpus = {total}/{num_gpus} = {derived:.2f} "
                "(num_gpus inconsistent with the figures)")
    elif per_gpu is not None:
        total = per_gpu * num_gpus
        notes.append("total throughput derived = per-GPU x num_gpus")

    attention = _attention_note(model, isl, osl)
    if attention:
        notes.append(attention)
    if not _text(row, "engine_version"):
        notes.append("engine version not recorded by the source")
    return PublishedServingRun(
        id=run_id, source_group=group, engine=engine, engine_version=_text(row, "engine_version"),
        model=model, gpu=gpu, num_gpus=num_gpus, tp=tp, pp=pp, ep=ep, attn_dp=attn_dp, replicas=replicas,
        precision=precision, kv_dtype=kv_dtype, isl=isl, osl=osl, concurrency=concurrency, request_rate=request_rate,
        measured_ttft_ms=ttft, measured_tpot_ms=tpot, measured_output_tokens_per_s_total=total,
        measured_output_tokens_per_s_per_gpu=per_gpu, notes="; ".join(notes),
        checkpoint_precision=checkpoint, hf_model_id=_text(row, "hf_model_id"),
    )


def load_published_serving_runs(
    path: Path | None = None,
) -> tuple[list[PublishedServingRun], list[SkippedServingRow]]:
    """The serving runs of `path` (default: the CSV shipped in `meshplan/data/published/`), and the skipped rows."""
    runs: list[PublishedServingRun] = []
    skipped: list[SkippedServingRow] = []
    for row in published_rows("serving-runs.csv", path):
        result = _load_row(row)
        if isinstance(result, PublishedServingRun):
            runs.append(result)
        else:
            skipped.append(result)
    return runs, skipped
