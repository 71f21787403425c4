"""Shared fixtures: small, explicit specs so that hand derivations stay readable."""

from __future__ import annotations

import pytest

from meshplan.specs import ModelSpec, TrainWorkload, load_gpu, make_cluster
from meshplan.strategy import Strategy, StrategyTable


@pytest.fixture
def gpt3_175b() -> ModelSpec:
    """GPT-3 175B as in Korthikanti et al. 2022 Table 3 (h=12288, a=96, L=96), with dropout."""
    return ModelSpec(name="gpt3-175b", num_layers=96, hidden=12288, ffn_hidden=4 * 12288, num_heads=96,
                     num_kv_heads=96, head_dim=128, vocab=51200, gated_mlp=False, tied_embeddings=True,
                     norm="layernorm", linear_bias=True, learned_positions=2048, dropout=True)


def table(*strategies: Strategy) -> StrategyTable:
    return StrategyTable.from_strategies(list(strategies))


@pytest.fixture
def a100_cluster():
    return lambda n: make_cluster(load_gpu("A100-80GB"), n)


@pytest.fixture
def workload_2k() -> TrainWorkload:
    return TrainWorkload(global_batch=64, seq_len=2048, precision="fp16", flash_attention=False)
