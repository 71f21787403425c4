"""Apply a `Strategy` to the decoder with PyTorch's own APIs: a DeviceMesh with named axes, tensor and sequence
parallelism (`parallelize_module`), pipeline stages (`torch.distributed.pipelining`), activation checkpointing,
and data parallelism (`fully_shard`, `DistributedDataParallel`, or a plain gradient all-reduce next to TP/PP).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from meshplan.cost.stages import stage_sizes
from meshplan.errors import PlanError
from meshplan.run.model import Block, Decoder, FeedForward
from meshplan.specs.model import ModelSpec
from meshplan.strategy import Strategy


def check_runnable(spec: ModelSpec, s: Strategy, global_batch: int, seq_len: int,
                   stage_layers: list[int] | None = None, layer_recompute: Sequence[str] | None = None) -> None:
    """What this executor (torch 2.13 on CPU/GPU) cannot run, refused up front with the reason."""
    if stage_layers is not None and (len(stage_layers) != s.pp or s.vpp != 1 or min(stage_layers) < 1
                                     or sum(stage_layers) != spec.num_layers):
        raise PlanError(f"stage layers {stage_layers} do not split {spec.num_layers} layers into pp={s.pp} non-empty "
                        "stages (vpp 1); give one count per stage adding up to the model's layers")
    if spec.num_layers < s.pp * s.vpp:
        raise PlanError(f"{spec.num_layers} layers cannot fill pp={s.pp} x vpp={s.vpp} pipeline chunks; "
                        "lower pp or vpp")
    if layer_recompute is not None and len(layer_recompute) != spec.num_layers:
        raise PlanError(f"{len(layer_recompute)} per-layer recomputation entries for {spec.num_layers} layers; "
                        "give one per layer")
    if s.cp > 1:
        raise PlanError(f"cp={s.cp}: context parallelism is not run by meshplan's executor (PyTorch's "
                        "experimental context_parallel needs CUDA SDPA kernels); plan with --no-cp")
    if s.ep > 1:
        raise PlanError(f"ep={s.ep}: PyTorch has no expert-parallel API; plan with --ep 1 (experts are replicated)")
    if spec.is_moe and s.tp > 1:
        raise PlanError(f"tp={s.tp}: tensor parallelism of expert layers is not run by the executor; use tp 1 for MoE")
    if s.tp > 1 and spec.num_kv_heads % s.tp:
        raise PlanError(f"tp={s.tp} does not divide kv_heads={spec.num_kv_heads}: the executor keeps whole KV groups "
                        "per rank; choose a tp that divides the KV heads")
    if s.sequence_parallel and seq_len % s.tp:
        raise PlanError(f"seq_len={seq_len} is not divisible by tp={s.tp} (sequence parallelism)")
    m = global_batch // (s.dp * s.micro_batch)
    if s.pp > 1 and s.schedule == "1f1b" and m < s.pp:
        raise PlanError(f"1F1B needs at least as many micro-batches as stages (micro-batches={m}, pp={s.pp}); "
                        "raise the global batch or use gpipe")


def build_mesh(s: Strategy, device_type: str) -> DeviceMesh:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (s.pp, s.dp, s.tp), mesh_dim_names=("pp", "dp", "tp"))


def chunk_layers(num_layers: int, pp: int, vpp: int = 1) -> list[list[int]]:
    """Contiguous layer ranges of the pp * vpp model chunks (chunk r + k * pp on pipeline rank r). Each rank holds
    the layers the cost model prices for its stage (`cost.stages.stage_sizes`: lighter first and last stages),
    cut into vpp chunks as evenly as they go (the heavier chunks first)."""
    per_rank = stage_sizes(num_layers, pp)
    sizes = [0] * (pp * vpp)
    for rank, total in enumerate(per_rank):
        base, extra = divmod(total, vpp)
        for k in range(vpp):
            sizes[rank + k * pp] = base + (k < extra)
    out, start = [], 0
    for size in sizes:
        out.append(list(range(start, start + size)))
        start += size
    return out


def stage_modules(model: Decoder, s: Strategy, pp_rank: int,
                  stage_layers: list[int] | None = None) -> list[tuple[int, Decoder]]:
    """(stage index, module) for the model chunks of this pipeline rank (looped: rank r holds r, r+pp, ...);
    `stage_layers` gives each stage its own number of layers (uneven `PipelineStage`s are allowed)."""
    num_stages = s.pp * s.vpp
    if stage_layers is None:
        chunks = chunk_layers(len(model.layers), s.pp, s.vpp)
    else:
        starts = [sum(stage_layers[:k]) for k in range(len(stage_layers))]
        chunks = [list(range(a, a + n)) for a, n in zip(starts, stage_layers)]
    out = []
    for k in range(s.vpp):
        index = pp_rank + k * s.pp
        stage = copy.deepcopy(model)
        keep = {str(i) for i in chunks[index]}
        for name in list(stage.layers.keys()):
            if name not in keep:
                del stage.layers[name]
        if index != 0:
            stage.tok_embeddings = None
        if index != num_stages - 1:
            stage.norm = None
            stage.output = None
        out.append((index, stage))
    return out


def _plan_for(module: Decoder, sp: bool) -> dict[str, object]:
    plan: dict[str, object] = {}
    if module.tok_embeddings is not None:
        # split along the hidden dimension: each rank computes and keeps only its slice of the embedding's gradient
        # (a vocabulary split, RowwiseParallel, has DTensor allocate the full vocab x hidden gradient per rank)
        plan["tok_embeddings"] = ColwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1) if sp else Replicate())
    if module.norm is not None and sp:
        plan["norm"] = SequenceParallel()
    if module.output is not None:  # logits stay split over the vocabulary: the loss runs under `loss_parallel`
        plan["output"] = ColwiseParallel(input_layouts=Shard(1) if sp else Replicate(), output_layouts=Shard(-1),
                                         use_local_output=False)
    return plan


def _block_plan(block: Block, sp: bool) -> dict[str, object]:
    if not isinstance(block.feed_forward, FeedForward):
        raise PlanError("tensor parallelism of MoE layers is not run by the executor")
    if sp:
        return {
            "attention_norm": SequenceParallel(),
            "attention": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "attention.wqkv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "feed_forward.w13": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
        }
    return {"attention.wqkv": ColwiseParallel(), "attention.wo": RowwiseParallel(),
            "feed_forward.w13": ColwiseParallel(), "feed_forward.w2": RowwiseParallel()}


def _parallelize(module: nn.Module, mesh: DeviceMesh, plan: dict[str, object]) -> None:
    """`parallelize_module`, but a plan key that matches no submodule is an error, not a warning."""
    names = {name for name, _ in module.named_modules()}
    missing = [k for k in plan if k not in names]
    if missing:
        raise PlanError(f"tensor-parallel plan keys {missing} match no submodule of {type(module).__name__}")
    parallelize_module(module, mesh, plan)  # type: ignore[arg-type]


def apply_tensor_parallel(module: Decoder, tp_mesh: DeviceMesh, sp: bool) -> None:
    """Megatron layout per block (column- then row-parallel), vocab-parallel embedding and head, the head's logits
    left split over the vocabulary for a vocab-parallel cross-entropy (Megatron's; PyTorch's `loss_parallel`);
    norms and the residual stream split along the sequence under sequence parallelism."""
    top = _plan_for(module, sp)
    if top:
        _parallelize(module, tp_mesh, top)
    for block in module.layers.values():
        _parallelize(block, tp_mesh, _block_plan(block, sp))  # type: ignore[arg-type]


def apply_checkpointing(module: Decoder, recompute: str, per_layer: Sequence[str] | None = None) -> None:
    """Full: checkpoint every block (after TP, so the wrapper sees the sharded block). Selective: only the
    attention core (QKᵀ, softmax, ·V), Korthikanti et al. 2022. `per_layer` (indexed by the global layer
    number) overrides `recompute` layer by layer."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for name in list(module.layers.keys()):
        option = recompute if per_layer is None else per_layer[int(name)]
        if option == "full":
            module.layers[name] = checkpoint_wrapper(module.layers[name])
        elif option == "selective":
            module.layers[name].attention.checkpoint_core = True  # type: ignore[union-attr]


@dataclass
class DataParallel:
    """How gradients are synchronised across dp: 'fsdp', 'ddp', 'allreduce' (plain, next to TP/PP) or 'none'."""

    kind: str
    module: nn.Module


def apply_data_parallel(module: Decoder, s: Strategy, mesh: DeviceMesh) -> DataParallel:
    """ZeRO-3: fully_shard per block, the embedding and the (final norm, LM head) pair as units of their own and
    the root last, as torchtitan wraps a decoder; blocks and embedding reshard after forward, the head does not
    (its backward comes right after its forward). Under PP nothing reshards after forward: the pipeline keeps
    the stage's weights and gradients unsharded until its last micro-batch. ZeRO-1/2: fully_shard without
    resharding (FSDP2's ZeRO-2-like mode; PyTorch has no optimizer-only sharding). ZeRO-0: DDP alone (gradients
    are views into its buckets: one copy, not two), a plain gradient all-reduce next to TP (DDP cannot hold
    DTensors) or PP (DDP inside stages is wrong)."""
    if s.dp == 1:
        return DataParallel("none", module)
    if s.zero >= 1:
        from torch.distributed.fsdp import fully_shard

        reshard = s.zero == 3 and s.pp == 1
        if module.tok_embeddings is not None:
            fully_shard(module.tok_embeddings, mesh=mesh["dp"], reshard_after_forward=reshard)
        for block in module.layers.values():
            fully_shard(block, mesh=mesh["dp"], reshard_after_forward=reshard)
        if module.output is not None and module.norm is not None:  # the last stage: final norm and head together
            fully_shard([module.norm, module.output], mesh=mesh["dp"], reshard_after_forward=False)
        fully_shard(module, mesh=mesh["dp"], reshard_after_forward=reshard)
        return DataParallel("fsdp", module)
    if s.tp == 1 and s.pp == 1:
        from torch.nn.parallel import DistributedDataParallel

        return DataParallel("ddp", DistributedDataParallel(module, process_group=mesh["dp"].get_group(),
                                                           gradient_as_bucket_view=True))
    return DataParallel("allreduce", module)


def allreduce_gradients(params: list[torch.nn.Parameter], mesh: DeviceMesh) -> None:
    """Average gradients over dp (gloo has no AVG: sum, then divide)."""
    import torch.distributed as dist

    group = mesh["dp"].get_group()
    size = mesh["dp"].size()
    for p in params:
        if p.grad is None:
            continue
        g = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
        dist.all_reduce(g, group=group)
        g.div_(size)
