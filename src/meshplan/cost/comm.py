"""Collective communication times with the α-β model over two link tiers.

A group of `n` ranks whose members sit `stride` ranks apart in the mesh has `k` members in each scale-up
domain (node) and spans `r = n / k` nodes. Collectives are hierarchical: the intra-node part moves bytes
over NVLink, the inter-node part moves 1/k of them over each member's own NIC (NCCL's hierarchical rings;
Thakur, Rabenseifner & Gropp 2005 for the α-β costs of ring / recursive halving-doubling algorithms).
All functions take numpy arrays (or scalars) and broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost.efficiency import Efficiency
from meshplan.specs.cluster import ClusterSpec


@dataclass(frozen=True)
class Links:
    """Effective per-GPU, per-direction bandwidths (bytes/s) and latencies (s) of the two tiers."""

    intra_bytes_per_s: float
    inter_bytes_per_s: float
    intra_latency_s: float
    inter_latency_s: float
    gpus_per_node: int

    @classmethod
    def of(cls, cluster: ClusterSpec, eff: Efficiency) -> Links:
        return cls(
            intra_bytes_per_s=cluster.intra_node_bytes_per_s * eff.intra_node_bandwidth,
            inter_bytes_per_s=cluster.inter_node_bytes_per_s * eff.inter_node_bandwidth,
            intra_latency_s=cluster.intra_node_latency_s,
            inter_latency_s=cluster.inter_node_latency_s,
            gpus_per_node=cluster.gpus_per_node,
        )


def _placement(n: np.ndarray, stride: np.ndarray, gpus_per_node: int) -> tuple[np.ndarray, np.ndarray]:
    """(members per node k, nodes spanned r) for groups of `n` ranks, `stride` apart."""
    n = np.asarray(n, dtype=np.float64)
    stride = np.asarray(stride, dtype=np.float64)
    per_node = np.where(stride >= gpus_per_node, 1.0, np.floor(gpus_per_node / np.maximum(stride, 1.0)))
    k = np.clip(np.minimum(per_node, n), 1.0, None)
    return k, np.maximum(n / k, 1.0)


def _log2(x: np.ndarray) -> np.ndarray:
    return np.ceil(np.log2(np.maximum(x, 1.0)))


def _ring_bandwidth_time(nbytes: np.ndarray, k: np.ndarray, r: np.ndarray, links: Links) -> np.ndarray:
    """(p-1)/p·n·β of one ring pass (reduce-scatter or all-gather), hierarchically over the two tiers."""
    nbytes = np.asarray(nbytes, dtype=np.float64)
    return (k - 1.0) / k * nbytes / links.intra_bytes_per_s + (r - 1.0) / r * (nbytes / k) / links.inter_bytes_per_s


def all_reduce_time(nbytes: np.ndarray, n: np.ndarray, stride: np.ndarray, links: Links) -> np.ndarray:
    """All-reduce of `nbytes` per rank: 2(k-1)/k·B/bw_intra + 2(r-1)/r·(B/k)/bw_inter + 2·log2(p)·α per tier.

    Bandwidth of the ring / Rabenseifner algorithm, 2(p-1)/p·n·β; latency of a tree (NCCL's double binary
    tree at scale), 2·log2(p)·α (Thakur et al. 2005, §4.4).
    """
    k, r = _placement(n, stride, links.gpus_per_node)
    latency = 2.0 * (_log2(k) * links.intra_latency_s + _log2(r) * links.inter_latency_s)
    return np.where(np.asarray(n) > 1, 2.0 * _ring_bandwidth_time(nbytes, k, r, links) + latency, 0.0)


def reduce_scatter_time(nbytes: np.ndarray, n: np.ndarray, stride: np.ndarray, links: Links) -> np.ndarray:
    """Reduce-scatter (or all-gather) of a `nbytes` buffer with a ring: (p-1)/p·n·β + (p-1)·α (Thakur §4.2).

    NCCL runs these two as rings only, so the latency grows with the group: (k-1)·α_intra + (r-1)·α_inter.
    """
    k, r = _placement(n, stride, links.gpus_per_node)
    latency = (k - 1.0) * links.intra_latency_s + (r - 1.0) * links.inter_latency_s
    return np.where(np.asarray(n) > 1, _ring_bandwidth_time(nbytes, k, r, links) + latency, 0.0)


all_gather_time = reduce_scatter_time


def all_to_all_time(nbytes: np.ndarray, n: np.ndarray, stride: np.ndarray, links: Links) -> np.ndarray:
    """All-to-all where each rank holds `nbytes` and keeps 1/n: the on-node and off-node shares move in
    parallel over their own links, so the slower share sets the time (pairwise exchange, Thakur §4.6);
    latency log2(n)·α of the slowest tier (messages are posted concurrently)."""
    k, r = _placement(n, stride, links.gpus_per_node)
    n = np.asarray(n, dtype=np.float64)
    nbytes = np.asarray(nbytes, dtype=np.float64)
    on_node = nbytes * (k - 1.0) / n / links.intra_bytes_per_s
    off_node = nbytes * (n - k) / n / links.inter_bytes_per_s
    latency = _log2(n) * np.where(r > 1, links.inter_latency_s, links.intra_latency_s)
    return np.where(n > 1, np.maximum(on_node, off_node) + latency, 0.0)


def p2p_time(nbytes: np.ndarray, crosses_node: np.ndarray, links: Links) -> np.ndarray:
    """One send/recv of `nbytes` between neighbours: α + B/bw on the tier it crosses."""
    nbytes = np.asarray(nbytes, dtype=np.float64)
    return np.where(
        crosses_node,
        links.inter_latency_s + nbytes / links.inter_bytes_per_s,
        links.intra_latency_s + nbytes / links.intra_bytes_per_s,
    )
