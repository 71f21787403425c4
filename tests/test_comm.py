"""α-β collective costs, derived by hand."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.cost.comm import Links, all_reduce_time, all_to_all_time, p2p_time, reduce_scatter_time

LINKS = Links(intra_bytes_per_s=100e9, inter_bytes_per_s=10e9, intra_latency_s=1e-6, inter_latency_s=10e-6,
              gpus_per_node=8)
GB = 1e9


def test_all_reduce_inside_a_node() -> None:
    # ring / Rabenseifner: 2·(p-1)/p·B/bw + 2·log2(p)·α = 2·7/8·1e9/100e9 + 2·3·1e-6
    assert all_reduce_time(GB, 8, 1, LINKS) == pytest.approx(2 * 7 / 8 * 0.01 + 6e-6)


def test_reduce_scatter_ring_latency_grows_with_the_group() -> None:
    # 64 ranks, stride 1: k=8, r=8. (7/8)·B/100e9 + (7/8)·(B/8)/10e9 + 7·1e-6 + 7·10e-6
    expected = 7 / 8 * 0.01 + 7 / 8 * (GB / 8) / 10e9 + 7e-6 + 70e-6
    assert reduce_scatter_time(GB, 64, 1, LINKS) == pytest.approx(expected)


def test_all_reduce_across_nodes_is_hierarchical() -> None:
    # 32 ranks, stride 1: k=8 per node over r=4 nodes.
    # intra: 2·7/8·B/100e9 + 2·3·1e-6; inter: 2·3/4·(B/8)/10e9 + 2·2·10e-6
    expected = 2 * (7 / 8 * 0.01 + 3e-6) + 2 * (3 / 4 * (GB / 8) / 10e9 + 2 * 10e-6)
    assert all_reduce_time(GB, 32, 1, LINKS) == pytest.approx(expected)


def test_strided_group_has_one_member_per_node() -> None:
    # dp group of 4 with stride 8 (tp=8 inside the node): every member on its own node, all bytes on the NIC
    expected = 2 * (3 / 4 * GB / 10e9 + 2 * 10e-6)
    assert all_reduce_time(GB, 4, 8, LINKS) == pytest.approx(expected)


def test_reduce_scatter_moves_half_the_bytes_of_an_all_reduce_and_trivial_group_is_free() -> None:
    sizes = np.array([2, 8, 64])
    no_latency = Links(100e9, 10e9, 0.0, 0.0, 8)
    np.testing.assert_allclose(2 * reduce_scatter_time(GB, sizes, 1, no_latency), all_reduce_time(GB, sizes, 1, no_latency))
    assert all_reduce_time(GB, 1, 1, LINKS) == 0.0 and reduce_scatter_time(GB, 1, 1, LINKS) == 0.0


def test_all_to_all_slower_share_sets_the_pace() -> None:
    # 16 ranks, stride 1: 7/16 of the buffer stays on the node (NVLink), 8/16 leaves it (NIC)
    t = all_to_all_time(GB, 16, 1, LINKS)
    assert t == pytest.approx(max(GB * 7 / 16 / 100e9, GB * 8 / 16 / 10e9) + 4 * 10e-6)


def test_p2p_picks_the_tier() -> None:
    assert p2p_time(GB, np.array([False, True]), LINKS).tolist() == pytest.approx([1e-6 + 0.01, 10e-6 + 0.1])


def test_more_members_never_cheaper_per_byte_across_nodes() -> None:
    sizes = np.array([2, 4, 8, 16, 32, 64, 128, 256])
    times = all_reduce_time(GB, sizes, 1, LINKS)
    assert np.all(np.diff(times) >= 0)
