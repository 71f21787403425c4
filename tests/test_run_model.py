"""Tier 2: the executor's model and helpers on one process."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from meshplan.errors import PlanError  # noqa: E402
from meshplan.run.config import RunConfig  # noqa: E402
from meshplan.run.model import build_model  # noqa: E402
from meshplan.run.parallel import check_runnable, chunk_layers, stage_modules  # noqa: E402
from meshplan.run.plan_run import tiny_model  # noqa: E402
from meshplan.run.worker import batch, reference_run  # noqa: E402
from meshplan.strategy import Strategy  # noqa: E402

TINY = tiny_model(Strategy(dp=1))
TINY_MOE = tiny_model(Strategy(dp=1), moe=True)


@pytest.mark.parametrize("spec", [TINY, TINY_MOE], ids=["dense", "moe"])
def test_parameter_count_equals_the_spec(spec) -> None:
    model = build_model(spec, seed=0)
    assert sum(p.numel() for p in model.parameters()) == spec.total_params()


def test_seeded_initialisation_is_reproducible_and_seed_dependent() -> None:
    a, b, c = build_model(TINY, 1), build_model(TINY, 1), build_model(TINY, 2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.output.weight, c.output.weight)


def test_causal_model_does_not_see_the_future() -> None:
    model = build_model(TINY, 0)
    x = torch.randint(0, TINY.vocab, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % TINY.vocab
    with torch.no_grad():
        assert torch.allclose(model(x)[0, :10], model(y)[0, :10], atol=1e-6)
        assert not torch.allclose(model(x)[0, 10:], model(y)[0, 10:])


def test_selective_checkpoint_gives_the_same_gradients() -> None:
    x = torch.randint(0, TINY.vocab, (2, 16))
    grads = []
    for selective in (False, True):
        model = build_model(TINY, 0)
        for block in model.layers.values():
            block.attention.checkpoint_core = selective
        model(x).sum().backward()
        grads.append(model.layers["0"].attention.wqkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_training_reduces_loss_on_repeated_data() -> None:
    cfg = RunConfig(model=TINY, strategy=Strategy(dp=1), global_batch=4, seq_len=16, steps=1, lr=1e-2)
    model = build_model(TINY, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = batch(cfg, 0)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]
    ref_losses, norms = reference_run(cfg.model_copy(update={"steps": 2}))
    assert len(ref_losses) == 2 and all(n > 0 for n in norms)


def test_pipeline_chunks_cover_every_layer_once() -> None:
    assert chunk_layers(10, 4) == [[0, 1], [2, 3, 4], [5, 6, 7], [8, 9]]  # lighter first and last
    model = build_model(tiny_model(Strategy(dp=1, pp=2, vpp=2)), 0)
    seen = []
    for pp_rank in range(2):
        for index, stage in stage_modules(model, Strategy(dp=1, pp=2, vpp=2, schedule="interleaved"), pp_rank):
            seen += [int(k) for k in stage.layers]
            assert (stage.tok_embeddings is not None) == (index == 0)
            assert (stage.output is not None) == (index == 3)
    assert sorted(seen) == list(range(len(model.layers)))


@pytest.mark.parametrize(
    ("strategy", "needle"),
    [
        (Strategy(dp=1, cp=2), "context parallelism is not run"),
        (Strategy(dp=2, ep=2), "no expert-parallel API"),
        (Strategy(dp=1, tp=4), "does not divide kv_heads=2"),
        (Strategy(dp=1, pp=4), "1F1B needs at least as many micro-batches as stages"),
    ],
)
def test_what_the_executor_refuses(strategy: Strategy, needle: str) -> None:
    with pytest.raises(PlanError, match=needle):
        check_runnable(TINY, strategy, global_batch=2, seq_len=16)


@pytest.fixture
def fake_two_ranks():
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("sp", [False, True], ids=["tp", "tp+sp"])
def test_collective_counts_match_the_cost_model(fake_two_ranks, sp: bool) -> None:
    """CommDebugMode counts what really runs in one block; the cost model prices the same number."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.debug import CommDebugMode

    from meshplan.cost.training import TP_COLLECTIVES_BACKWARD, TP_COLLECTIVES_FORWARD
    from meshplan.run.parallel import apply_tensor_parallel

    spec = tiny_model(Strategy(dp=1, tp=2))
    model = build_model(spec, 0)
    apply_tensor_parallel(model, init_device_mesh("cpu", (2,), mesh_dim_names=("tp",)), sp)
    x = torch.randn(2, 8 if sp else 16, spec.hidden, requires_grad=True)
    with CommDebugMode() as fwd:
        y = model.layers["0"](x)
    with CommDebugMode() as bwd:
        y.sum().backward()
    def counts(mode) -> dict[str, int]:  # noqa: E306
        return {str(k).split(".")[-1]: v for k, v in mode.get_comm_counts().items()}
    if sp:
        expected_f = {"all_gather_into_tensor": TP_COLLECTIVES_FORWARD, "reduce_scatter_tensor": TP_COLLECTIVES_FORWARD}
        expected_b = {"all_gather_into_tensor": TP_COLLECTIVES_BACKWARD, "reduce_scatter_tensor": TP_COLLECTIVES_BACKWARD}
    else:
        expected_f, expected_b = {"all_reduce": TP_COLLECTIVES_FORWARD}, {"all_reduce": TP_COLLECTIVES_BACKWARD}
    assert counts(fwd) == expected_f and counts(bwd) == expected_b


def test_plan_to_run_config_and_its_refusals(tmp_path) -> None:
    from typer.testing import CliRunner

    from meshplan.cli.main import app
    from meshplan.run.launch import launch
    from meshplan.run.plan_run import config_from_plan

    plan = tmp_path / "plan.json"
    r = CliRunner().invoke(app, ["plan", "--model", "Llama-3.1-8B", "--gpu", "H100", "--num-gpus", "16",
                                 "--global-batch", "64", "--seq-len", "4096", "--tp", "4", "--pp", "2", "--no-cp",
                                 "--out", str(plan)])
    assert r.exit_code == 0, r.output
    cfg, notes = config_from_plan(plan, model="tiny", nproc=8, steps=2, seq_len=None, global_batch=None, timeout_s=30)
    assert (cfg.strategy.tp, cfg.strategy.pp, cfg.strategy.dp) == (4, 2, 1)
    assert cfg.model.num_kv_heads >= 4 and cfg.seq_len == 64 and any("dp 2 -> 1" in n for n in notes)
    six_heads = tmp_path / "config.json"
    six_heads.write_text('{"model_type": "llama", "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 6, '
                         '"num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 128}')
    with pytest.raises(PlanError, match=r"heads not divisible by tp \(heads=6, tp=4\)"):
        config_from_plan(plan, model=str(six_heads), nproc=8, steps=2, seq_len=None, global_batch=None, timeout_s=30)
    big = cfg.model_copy(update={"strategy": cfg.strategy.model_copy(update={"dp": 16})})
    with pytest.raises(PlanError, match="exceeds 64 processes"):
        launch(big, 128, reference=False)
