"""Published, measured training runs as meshplan specs.

Reads `meshplan/data/published/training-runs.csv` (a copy of the project's reference data; its README gives
the conventions) and turns every row whose parallel layout is known into a `PublishedRun`: the model, the
cluster, the workload, the strategy, and one measured figure that does not depend on how the source counts
FLOPs: tokens per second per GPU. A row's gaps are filled per source family from what that source documents,
and every value filled that way is written into the run's `notes`. Rows without a layout, or whose strategy
breaks a rule of `check_strategy`, come back as `SkippedRow`s with the reason.

Tokens/s per GPU comes, in this order, from the published tokens/s (per GPU), from global_batch·seq_len /
step time / GPUs, or from the published TFLOP/s divided by the FLOPs per token *as that source counts them*:
- Megatron-LM 2020-2022, Narayanan et al. 2021 (its PTD-P and ZeRO-3 rows alike), BigScience, MT-NLG (and,
  by assumption, OPT): executed FLOPs with full recomputation, Narayanan et al. 2021 eq. 3,
  F = 96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)) per iteration, i.e. F/(B·s) per token.
- Megatron-Core r0.8 (and NeMo 24.07, which uses it): model FLOPs, `num_floating_point_operations` of
  megatron/training/training.py: 12·B·s·l·h²·[(1 + g/a + s/h)·(a·d/h) + (f/h)·k·(3/2 if SwiGLU) + V/(2·l·h)].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshplan.calibrate.csvdata import published_rows
from meshplan.errors import PlanError
from meshplan.specs.catalog import load_gpu
from meshplan.specs.cluster import ClusterSpec, make_cluster
from meshplan.specs.model import ModelSpec
from meshplan.specs.workload import Precision, TrainWorkload
from meshplan.strategy import Recompute, Strategy, check_strategy

__all__ = [
    "PublishedRun",
    "SkippedRow",
    "load_published_runs",
    "megatron_core_flops_per_token",
    "narayanan_flops_per_token",
]

# Sources whose stack overlapped TP collectives with GEMMs: the Megatron-Core r0.8 benchmark states
# --tp-comm-overlap; NeMo 24.07's performance recipes enable Transformer Engine userbuffers (assumed).
_TP_OVERLAP = {"mcore08", "nemo2407"}

NARAYANAN_EQ3 = "Narayanan et al. 2021 eq. 3, 96·l·h²·(1 + s/(6h) + V/(16·l·h)) per token, recompute-inclusive"
MCORE_FORMULA = ("Megatron-Core r0.8 num_floating_point_operations, 12·l·h²·[(1 + g/a + s/h)·(a·d/h) "
                 "+ (f/h)·k·(3/2 if SwiGLU) + V/(2·l·h)] per token, model FLOPs")

# Inter-node bandwidths stated by a row's source where it differs from the GPU's default system (bytes/s per GPU).
_ROCE_1600GBPS_PER_8GPU_NODE = 1600e9 / 8 / 8  # llm-foundry: "1600 Gbps node-node interconnect (RoCE)"
_OPA_100GBPS_LINK = 100e9 / 8  # Jean Zay: Intel Omni-Path 100 Gb/s links


@dataclass(frozen=True)
class PublishedRun:
    """One published run with its exact layout and its measured throughput."""

    id: str
    source_group: str
    """Source family, e.g. 'megatron-2020', 'narayanan21-ptdp', 'mcore08', 'nemo2407', 'llmfoundry', 'bloom'."""
    model: ModelSpec
    cluster: ClusterSpec
    workload: TrainWorkload
    strategy: Strategy
    measured_tokens_per_s_per_gpu: float
    """Always filled; see `tokens_derivation`."""
    tokens_derivation: str
    """'published tokens/s', 'global_batch*seq/step_time/num_gpus', or 'TFLOP/s / (flops per token, <convention>)'."""
    measured_memory_bytes: float | None
    """Peak memory per GPU as the source reported it (see `notes` for what was measured), or None."""
    notes: str
    """The assumptions made for this row; contains 'UNCERTAIN' for rows whose pairing of layout and figure is doubtful."""

    @property
    def uncertain(self) -> bool:
        return "UNCERTAIN" in self.notes


@dataclass(frozen=True)
class SkippedRow:
    """A row that could not be turned into a run, and why."""

    id: str
    reason: str


# --- FLOP-counting conventions -----------------------------------------------------------------------------------
def narayanan_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """Executed FLOPs per token with full recomputation, Narayanan et al. 2021 eq. 3 divided by B·s."""
    layers, h, vocab = model.num_layers, model.hidden, model.vocab
    return 96.0 * layers * h * h * (1.0 + seq_len / (6.0 * h) + vocab / (16.0 * layers * h))


def megatron_core_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """Model FLOPs per token as Megatron-Core r0.8 counts them (`num_floating_point_operations` / (B·s))."""
    layers, h = model.num_layers, model.hidden
    q_ratio = model.num_heads * model.head_dim / h
    attention = (1.0 + model.num_kv_heads / model.num_heads + seq_len / h) * q_ratio
    ffn = model.moe_ffn_hidden if model.is_moe else model.ffn_hidden
    routed = model.moe_topk if model.is_moe else 1
    mlp = ffn / h * routed * (1.5 if model.gated_mlp else 1.0)
    logit = model.vocab / (2.0 * layers * h)
    return 12.0 * layers * h * h * (attention + mlp + logit)


# --- row helpers ---------------------------------------------------------------------------------------------
def _int(row: dict[str, str], key: str) -> int | None:
    text = row[key].strip()
    return int(float(text)) if text else None


def _float(row: dict[str, str], key: str) -> float | None:
    text = row[key].strip()
    return float(text) if text else None


def _group(run_id: str) -> str:
    prefixes = (
        ("mlm2020-", "megatron-2020"),
        ("narayanan21-t2-zero3-", "narayanan21-zero3"),
        ("narayanan21-", "narayanan21-ptdp"),
        ("korthikanti22-", "korthikanti22"),
        ("mcore08-", "mcore08"),
        ("mcore-moe-mixtral", "mixtral"),
        ("nemo2407-", "nemo2407"),
        ("llmfoundry-", "llmfoundry"),
        ("bloom176b-", "bloom"),
        ("bigscience-tr8", "bigscience-tr8"),
        ("mtnlg530b-", "mtnlg"),
        ("opt175b-", "opt"),
    )
    for prefix, group in prefixes:
        if run_id.startswith(prefix):
            return group
    raise PlanError(f"published run {run_id!r}: no source family known for this id")


# Families whose published TFLOP/s count executed FLOPs with full recomputation (README: 'Counting conventions').
_RECOMPUTE_COUNTING = {"megatron-2020", "narayanan21-ptdp", "narayanan21-zero3", "korthikanti22", "bloom",
                       "bigscience-tr8", "mtnlg", "opt"}
_MODEL_FLOPS_COUNTING = {"mcore08", "nemo2407", "mixtral"}
# Stacks before FlashAttention (Dao et al. 2022): the s x s score matrix is materialised.
_NO_FLASH = {"megatron-2020", "narayanan21-ptdp", "narayanan21-zero3", "korthikanti22", "bloom", "bigscience-tr8",
             "mtnlg", "opt"}


def _model(row: dict[str, str], group: str, notes: list[str]) -> ModelSpec:
    """The architecture, with each family's conventions (gating, tying, norms, biases, positions, vocab)."""
    name = row["model"]
    layers, hidden, heads = _int(row, "num_layers"), _int(row, "hidden"), _int(row, "num_heads")
    seq = _int(row, "seq_len")
    if not (layers and hidden and seq):
        raise PlanError(f"published run {row['id']}: num_layers, hidden and seq_len are required")
    if heads is None:
        if row["id"] == "narayanan21-t1-310b":
            heads = 128
            notes.append("heads=128 from Narayanan et al. 2021 Table 1 (310.1B row; column empty here)")
        else:
            raise PlanError(f"published run {row['id']}: num_heads is empty")
    kv_heads = _int(row, "num_kv_heads") or heads
    vocab = _int(row, "vocab")
    lower = name.lower()

    # Defaults: a GPT-3-style Megatron GPT (LayerNorm, biases, GeLU MLP, tied embeddings, learned positions).
    arch: dict[str, object] = dict(gated_mlp=False, tied_embeddings=True, norm="layernorm", linear_bias=True,
                                   dropout=True, learned_positions=seq, embedding_norm=False)
    if group in ("megatron-2020", "narayanan21-ptdp", "narayanan21-zero3", "korthikanti22", "mtnlg"):
        if vocab is None:
            vocab = 51200
            notes.append("vocab 51200 (Megatron GPT-2 BPE padded; the Megatron README/paper value)")
    elif group == "mcore08":
        # The table's parameter counts (e.g. 1.7B for 24x2048, 7.1B for 30x4096 with V=131072) need untied
        # embeddings and a 4h GeLU MLP; rotary positions assumed.
        arch.update(tied_embeddings=False, dropout=False, learned_positions=0)
        notes.append("untied embeddings (matches the table's parameter counts), rotary positions, no dropout assumed")
    elif group == "nemo2407":
        if lower.startswith("gpt3"):
            # NeMo GPTConfig: tied embeddings, learned absolute positions, LayerNorm with biases; the 175B
            # config sets hidden/attention dropout 0, the 5B/20B keep TransformerConfig's 0.1.
            arch.update(dropout=not lower.startswith("gpt3-175b"))
            if vocab is None:
                vocab = 51200
                notes.append("vocab 51200 assumed (GPT-2 BPE padded; TFLOP/s and tokens/s of the table agree "
                             "with 50.6k-53k)")
        elif lower.startswith("llama"):
            arch.update(gated_mlp=True, tied_embeddings=False, norm="rmsnorm", linear_bias=False, dropout=False,
                        learned_positions=0)
        elif lower.startswith("nemotron"):
            # Nemotron-3/4: squared-ReLU MLP (not gated), untied, LayerNorm (1p), no biases, rotary.
            arch.update(tied_embeddings=False, linear_bias=False, dropout=False, learned_positions=0)
            if vocab is None:
                vocab = 256000
                notes.append("vocab 256000 (Nemotron SentencePiece; the table's TFLOP/s / tokens/s implies ~257k)")
    elif group == "llmfoundry":
        # MPT: tied embeddings, no biases, no dropout; NumParams grows with seq_len, so the benchmark configs
        # ran with a learned positional embedding of seq_len rows (not ALiBi).
        arch.update(linear_bias=False, dropout=False, learned_positions=seq)
        notes.append("MPT: tied, no bias, learned positions = seq_len (NumParams varies with seq_len)")
    elif group == "bloom":
        # tr11 README: ALiBi, embedding LayerNorm, tied embeddings, Megatron dropout 0.1 inherited.
        arch.update(learned_positions=0, embedding_norm=True)
        if vocab is None:
            vocab = 250880
            notes.append("vocab 250880 (BLOOM padded vocabulary, tr11 README)")
    elif group == "bigscience-tr8":
        pass  # Megatron-DeepSpeed GPT with learned positions (--max-position-embeddings = seq), vocab given
    elif group == "opt":
        if vocab is None:
            vocab = 50272
            notes.append("vocab 50272 (OPT checkpoints' vocabulary)")
    elif group == "mixtral":
        arch.update(gated_mlp=True, tied_embeddings=False, norm="rmsnorm", linear_bias=False, dropout=False,
                    learned_positions=0)
    if vocab is None:
        raise PlanError(f"published run {row['id']}: vocab is empty and the family gives none")

    experts, topk = _int(row, "moe_experts") or 0, _int(row, "moe_topk") or 0
    ffn = _int(row, "ffn_hidden") or 0
    moe = dict(num_experts=experts, moe_topk=topk, moe_ffn_hidden=ffn, ffn_hidden=0) if experts else dict(ffn_hidden=ffn)
    return ModelSpec(name=name, num_layers=layers, hidden=hidden, num_heads=heads, num_kv_heads=kv_heads,
                     head_dim=hidden // heads, vocab=vocab, **moe, **arch)  # type: ignore[arg-type]


def _cluster(row: dict[str, str], num_gpus: int, notes: list[str]) -> ClusterSpec:
    text = row["gpu"]
    inter: float | None = None
    if text.startswith("V100"):
        gpu = load_gpu("V100-32GB")
        if "Jean Zay" in text:
            per_node = 4
            inter = 4 * _OPA_100GBPS_LINK / per_node
            notes.append("Jean Zay V100 nodes: 4 GPUs, 4x100 Gb/s Omni-Path per node assumed (IDRIS converged nodes)")
        else:
            per_node = 16  # DGX-2
    elif text.startswith("H100"):
        gpu, per_node = load_gpu("H100-SXM"), 8
    elif text.startswith("A100-40GB"):
        gpu, per_node = load_gpu("A100-40GB"), 8
    elif text.startswith("A100"):
        gpu, per_node = load_gpu("A100-80GB"), 8
        if "variant not stated" in text:
            notes.append("A100 variant not stated: taken as A100-80GB (README convention)")
        if "Jean Zay" in text:
            inter = 4 * _OPA_100GBPS_LINK / per_node
            notes.append("Jean Zay A100 nodes: 8 GPUs with 4 Omni-Path 100 Gb/s links per node (tr11 README)")
    else:
        raise PlanError(f"published run {row['id']}: unknown GPU {text!r}")
    if "1600 Gbps" in text:
        inter = _ROCE_1600GBPS_PER_8GPU_NODE
    return make_cluster(gpu, num_gpus, gpus_per_node=per_node, inter_node_bytes_per_s=inter)


def _precision(row: dict[str, str], group: str, cluster: ClusterSpec) -> Precision:
    text = row["precision"].lower()
    if "fp8" in text:
        return "fp8"
    if cluster.gpu.architecture == "volta":
        return "fp16"
    has_fp16, has_bf16 = "fp16" in text, "bf16" in text
    if has_bf16 and not has_fp16:
        return "bf16"
    if has_fp16 and not has_bf16:
        return "fp16"
    if group == "megatron-2020":
        return "fp16"  # notes: 'mixed precision' meant fp16 at that time
    return "bf16"


def _recompute(row: dict[str, str], group: str, notes: list[str]) -> Recompute:
    text = row["recompute"].strip().lower()
    if text.startswith("full"):
        return "full"
    if text.startswith("selective"):
        return "selective"
    if text.startswith("none"):
        return "none"
    if text:
        raise PlanError(f"published run {row['id']}: unknown recompute {row['recompute']!r}")
    if group in _RECOMPUTE_COUNTING:
        if group == "megatron-2020":
            notes.append("recompute full assumed (Megatron 2019 checkpointed every layer; the README's TFLOP/s "
                         "match eq. 3's factor 4 at the published step times)")
        elif group.startswith("narayanan21"):
            notes.append("recompute full assumed (the paper's eq. 3 counts it; setting not printed per row)")
        else:
            notes.append("recompute full assumed (recompute-inclusive TFLOP/s counting)")
        return "full"
    notes.append("recompute none assumed (not stated; source counts model FLOPs)")
    return "none"


def _zero(row: dict[str, str], group: str, notes: list[str]) -> int:
    stage = _int(row, "zero_stage")
    if stage is not None:
        return stage
    if group in ("mcore08", "nemo2407", "mixtral"):
        if group == "mcore08":
            notes.append("zero 1: --overlap-param-gather needs the distributed optimizer")
        else:
            notes.append("zero 1: distributed optimizer is the default")
        return 1
    if group == "mtnlg":
        notes.append("zero 1 assumed ('ZeRO-powered DP', stage not stated; DeepSpeed pipeline supports ZeRO-1 only)")
        return 1
    if group == "bigscience-tr8":
        notes.append("zero 1 (tr8 Megatron-DeepSpeed ZERO_STAGE=1; no effect at dp=1)")
        return 1
    if group == "opt":
        notes.append("zero 3 (FSDP full sharding)")
        return 3
    notes.append("zero 0 (Megatron-LM 2020-2022 had no distributed optimizer)")
    return 0


def _micro_batch(row: dict[str, str], group: str, global_batch: int, dp: int, notes: list[str]) -> int:
    mb = _int(row, "micro_batch")
    if mb is not None:
        return mb
    if group == "megatron-2020":
        mb = global_batch // dp
        notes.append(f"micro_batch {mb} = batch per data-parallel rank (no gradient accumulation in Megatron 2020)")
        return mb
    notes.append("micro_batch 1 assumed (not stated)")
    return 1


def _tokens(row: dict[str, str], group: str, model: ModelSpec, cluster: ClusterSpec, workload: TrainWorkload,
            notes: list[str]) -> tuple[float, str] | None:
    published = _float(row, "measured_tokens_per_sec")
    if published is not None:
        return published, "published tokens/s"
    step = _float(row, "measured_step_time_s")
    if step is not None:
        return workload.global_batch * workload.seq_len / step / cluster.num_gpus, "global_batch*seq/step_time/num_gpus"
    tflops = _float(row, "measured_tflops_per_gpu")
    via_mfu = ""
    if tflops is None:
        mfu = _float(row, "measured_mfu")
        if mfu is None:
            return None
        tflops = mfu / 100.0 * cluster.gpu.peak(workload.precision) / 1e12
        via_mfu = f"MFU {mfu}% x {workload.precision} peak = {tflops:.1f} TFLOP/s; "
    if group in _RECOMPUTE_COUNTING:
        per_token, convention = narayanan_flops_per_token(model, workload.seq_len), NARAYANAN_EQ3
    elif group in _MODEL_FLOPS_COUNTING:
        per_token, convention = megatron_core_flops_per_token(model, workload.seq_len), MCORE_FORMULA
    else:
        return None
    return tflops * 1e12 / per_token, f"{via_mfu}TFLOP/s / (flops per token, {convention})"


def _memory(row: dict[str, str], notes: list[str]) -> float | None:
    gb = _float(row, "measured_memory_gb")
    if gb is None:
        return None
    notes.append("memory: nvidia-smi reading as printed (includes allocator cache and CUDA context; "
                 "GB vs GiB not stated), taken as x1e9 bytes")
    return gb * 1e9


def _load_row(row: dict[str, str]) -> PublishedRun | SkippedRow:
    run_id = row["id"]
    group = _group(run_id)
    notes: list[str] = []
    if "UNCERTAIN" in row["notes"]:
        notes.append("UNCERTAIN (source notes)")
    if run_id.startswith("narayanan21-t1-"):
        notes.append("TP/PP as printed in Narayanan et al. 2021 Table 1 (it has TP and PP columns), vpp 1 assumed")

    num_gpus, tp, pp = _int(row, "num_gpus"), _int(row, "tp"), _int(row, "pp")
    if num_gpus is None or tp is None:
        what = "strong-scaling endpoint" if "strong" in run_id else "abstract-only figure"
        return SkippedRow(run_id, f"layout missing ({what}): source gives no TP/PP split for this run")
    if pp is None:
        if group != "opt":
            return SkippedRow(run_id, "layout missing: pipeline-parallel size not given")
        pp = 1
        notes.append("pp 1 (FSDP + Megatron TP, no pipeline)")
    cp, ep, vpp = _int(row, "cp") or 1, _int(row, "ep") or 1, _int(row, "vpp") or 1
    dp = _int(row, "dp") or num_gpus // (tp * pp * cp)
    global_batch = _int(row, "global_batch")
    if global_batch is None:
        if group != "opt":
            return SkippedRow(run_id, "global batch not given")
        global_batch = dp * 8
        notes.append(f"global_batch {global_batch} = dp x 8 sequences (~2M tokens, OPT Table 1)")
    seq = _int(row, "seq_len")
    if seq is None:
        return SkippedRow(run_id, "sequence length not given")

    try:
        model = _model(row, group, notes)
        cluster = _cluster(row, num_gpus, notes)
    except PlanError as exc:
        return SkippedRow(run_id, str(exc))
    precision = _precision(row, group, cluster)
    workload = TrainWorkload(global_batch=global_batch, seq_len=seq, precision=precision,
                             flash_attention=group not in _NO_FLASH, tp_comm_overlap=group in _TP_OVERLAP)
    recompute = _recompute(row, group, notes)
    if group == "korthikanti22":
        sequence_parallel = "sequence parallel" in row["recompute"]
    elif group in ("mcore08", "nemo2407", "mixtral"):
        sequence_parallel = tp > 1  # Megatron-Core/NeMo default with TP (and --tp-comm-overlap needs it)
    else:
        sequence_parallel = False
    strategy = Strategy(
        dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, vpp=vpp,
        micro_batch=_micro_batch(row, group, global_batch, dp, notes),
        zero=_zero(row, group, notes), recompute=recompute, sequence_parallel=sequence_parallel,
        schedule="interleaved" if vpp > 1 else "1f1b",
    )
    try:
        check_strategy(strategy, model, cluster, workload)
    except PlanError as exc:
        reason = str(exc)
        if group == "bloom":
            reason += (" [the run used an uneven partition: 'type:transformer|embedding' puts embed+5, 6 x 10 and "
                       "5+embed transformer blocks on the 12 stages]")
        return SkippedRow(run_id, reason)

    tokens = _tokens(row, group, model, cluster, workload, notes)
    if tokens is None:
        return SkippedRow(run_id, "no tokens/s, step time, TFLOP/s or MFU to derive throughput from")
    if group == "opt":
        notes.append("UNCERTAIN: 147 TFLOP/s is 'up to' (peak, not average) and its counting is not stated; "
                     "recompute-inclusive counting assumed")
    if group == "llmfoundry" and workload.precision == "fp8":
        notes.append("source MFU is against the FP8 peak (tokens/s used, not MFU)")
    if group == "nemo2407":
        notes.append("fp8 (Transformer Engine); source TFLOP/s are model FLOPs (tokens/s used)")
    return PublishedRun(
        id=run_id, source_group=group, model=model, cluster=cluster, workload=workload, strategy=strategy,
        measured_tokens_per_s_per_gpu=tokens[0], tokens_derivation=tokens[1],
        measured_memory_bytes=_memory(row, notes), notes="; ".join(notes),
    )


def load_published_runs(path: Path | None = None) -> tuple[list[PublishedRun], list[SkippedRow]]:
    """The published runs of `path` (default: the CSV shipped in `meshplan/data/published/`), and the skipped rows."""
    runs: list[PublishedRun] = []
    skipped: list[SkippedRow] = []
    for row in published_rows("training-runs.csv", path):
        result = _load_row(row)
        (runs if isinstance(result, PublishedRun) else skipped).append(result)  # type: ignore[arg-type]
    return runs, skipped
