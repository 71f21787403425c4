"""Tier 3: several processes under torchrun (gloo). Loss parity with one process for every strategy family the
executor supports, and the launcher's handling of failing and hanging ranks."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("torch")

from meshplan.errors import PlanError  # noqa: E402
from meshplan.run.config import Fault, RunConfig  # noqa: E402
from meshplan.run.launch import RunFailed, launch, launch_many  # noqa: E402
from meshplan.run.plan_run import tiny_model  # noqa: E402
from meshplan.strategy import Strategy  # noqa: E402

pytestmark = pytest.mark.multiprocess
TOLERANCE = 1e-4  # relative, on every step's loss and gradient norm


def _once_more_if_killed(run, attempts: int = 3):  # type: ignore[no-untyped-def]
    """A launch that loses a rank (SIGABRT) is retried, up to `attempts` in all, with a warning that quotes each
    failure (set MESHPLAN_RUN_STDERR=path to keep a failed launch's stderr). The one cause caught so far, a rank
    aborting in C++ teardown after writing its results ("terminate called without an active exception", about one
    launch in 20-40 here), is gone since launched workers leave with os._exit; the retry stays as a safety net."""
    import warnings

    for attempt in range(attempts - 1):
        try:
            return run()
        except RunFailed as exc:
            warnings.warn(f"launch {attempt + 1} of {attempts} failed and is retried: {exc}", stacklevel=2)
    return run()


def _config(strategy: Strategy, moe: bool = False, **kw) -> RunConfig:
    spec = tiny_model(strategy, moe=moe)
    m = max(strategy.pp, 1)
    return RunConfig(model=spec, strategy=strategy, global_batch=strategy.dp * strategy.micro_batch * m, seq_len=32,
                     steps=3, lr=1e-3, timeout_s=60, **kw)


FAMILIES = {
    "ddp": Strategy(dp=2, zero=0),
    "fsdp-zero3-full-recompute": Strategy(dp=2, zero=3, recompute="full"),
    "tp-sp-selective": Strategy(dp=1, tp=2, sequence_parallel=True, recompute="selective"),
    "pp-interleaved": Strategy(dp=1, pp=2, vpp=2, schedule="interleaved", micro_batch=2),
    "pp-gpipe": Strategy(dp=1, pp=2, schedule="gpipe"),
    "tp-pp-sp": Strategy(dp=1, tp=2, pp=2, sequence_parallel=True),
    "tp-dp-allreduce": Strategy(dp=2, tp=2, zero=0),
    "pp-dp-fsdp": Strategy(dp=2, pp=2, zero=1, micro_batch=2),
    "tp-pp-dp-fsdp": Strategy(dp=2, tp=2, pp=2, zero=1, sequence_parallel=True),
    "tp-dp-fsdp-zero3": Strategy(dp=2, tp=2, zero=3, sequence_parallel=True),
    "pp-dp-fsdp-zero3": Strategy(dp=2, pp=2, zero=3, micro_batch=2),
}


MOE_FAMILIES = {"moe-fsdp": Strategy(dp=2, zero=1), "moe-pp": Strategy(dp=1, pp=2, micro_batch=1)}


@pytest.fixture(scope="module")
def family_results() -> dict[str, object]:
    """Every family, grouped by process count: one torchrun launch per group (start-up is most of the cost)."""
    cases = {**{k: (s, False) for k, s in FAMILIES.items()}, **{k: (s, True) for k, s in MOE_FAMILIES.items()}}
    results: dict[str, object] = {}
    for nproc in sorted({s.num_gpus for s, _ in cases.values()}):
        names = [k for k, (s, _) in cases.items() if s.num_gpus == nproc]
        configs = [_config(cases[k][0], moe=cases[k][1]) for k in names]
        ran = _once_more_if_killed(lambda configs=configs, nproc=nproc: launch_many(configs, nproc))
        results.update(zip(names, ran))
    return results


@pytest.mark.parametrize("name", list(FAMILIES) + list(MOE_FAMILIES))
def test_loss_parity_with_one_process(family_results, name: str) -> None:
    s = {**FAMILIES, **MOE_FAMILIES}[name]
    result = family_results[name]
    assert result.world_size == s.num_gpus and result.backend == "gloo"
    assert result.config.strategy == s
    assert result.max_loss_rel_diff <= TOLERANCE, (result.losses, result.reference_losses)
    assert result.max_grad_norm_rel_diff <= TOLERANCE, (result.grad_norms, result.reference_grad_norms)
    assert result.step_time_s > 0 and result.peak_memory_bytes > 0
    assert len({tuple(r.coords.values()) for r in result.ranks}) == s.num_gpus


def test_more_tensor_parallelism_means_less_memory_per_rank() -> None:
    two_ranks = _once_more_if_killed(lambda: launch(_config(Strategy(dp=1, tp=2)), 2, reference=False))
    single = RunConfig(**{**_config(Strategy(dp=1, tp=2)).model_dump(), "strategy": Strategy(dp=1, tp=1)})
    one_rank = _once_more_if_killed(lambda: launch(single, 1, reference=False))
    resident = lambda r: max(x.memory["resident_bytes"] for x in r.ranks)  # noqa: E731
    assert resident(two_ranks) < 0.7 * resident(one_rank)


def test_tensor_parallelism_splits_the_logits_and_the_vocabulary_gradients() -> None:
    """A model whose vocabulary dominates: 1 layer, hidden 64, vocab 16,384, batch 4 x 32 tokens. One process holds
    logits of 4·32·16,384 = 2.1M floats (8.4 MB; the loss adds its log-softmax and the gradient of each) and
    gradients of the embedding and head (2 x 1.05M floats, 8.4 MB). With the vocabulary-parallel loss and the
    hidden-split embedding, tp=2 keeps half of each per rank; gathering the logits (or a full-size embedding
    gradient, as a vocabulary-split DTensor embedding makes) would keep the step's peak near one process's."""
    from meshplan.specs.model import ModelSpec

    spec = ModelSpec(name="wide-vocab", num_layers=1, hidden=64, ffn_hidden=128, num_heads=4, num_kv_heads=4,
                     head_dim=16, vocab=16384, gated_mlp=True, tied_embeddings=False)
    cfg = RunConfig(model=spec, strategy=Strategy(dp=1, tp=2), global_batch=4, seq_len=32, steps=2, timeout_s=60)
    two = _once_more_if_killed(lambda: launch(cfg, 2, reference=False))
    one = _once_more_if_killed(lambda: launch(cfg.model_copy(update={"strategy": Strategy(dp=1, tp=1)}), 1,
                                              reference=False))
    live = lambda r: max(x.memory["step_live_peak_bytes"] for x in r.ranks)  # noqa: E731
    assert live(two) < 0.6 * live(one)


def _own_temp_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> bytes:
    """Point tempfile at tmp_path so that this test's rank processes name it on their command line."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return str(tmp_path).encode()


def _no_orphans(marker: bytes) -> None:
    """No rank process of this test (its command line names the test's own temp dir) outlives the launch;
    other launches on the machine (another test session) are not this test's concern."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            assert not (b"meshplan.run.worker" in cmd and marker in cmd), f"orphan rank process {pid}"


def test_a_rank_that_raises_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    marker = _own_temp_dir(monkeypatch, tmp_path)
    cfg = _config(Strategy(dp=2, zero=0), fault=Fault(rank=1, kind="raise", step=1))
    with pytest.raises(RunFailed, match=r"rank 1 failed: RuntimeError: injected fault on rank 1 at step 1"):
        launch(cfg, 2, reference=False)
    _no_orphans(marker)


def test_a_rank_that_hangs_times_out_and_everything_is_killed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    marker = _own_temp_dir(monkeypatch, tmp_path)
    cfg = _config(Strategy(dp=2, zero=0), fault=Fault(rank=1, kind="hang", step=1)).model_copy(update={"timeout_s": 8})
    with pytest.raises(RunFailed) as err:
        launch(cfg, 2, reference=False, timeout_s=120)
    assert "rank 0" in str(err.value)  # the rank left waiting in the collective reports the timeout
    _no_orphans(marker)


def test_process_count_must_match_the_layout() -> None:
    with pytest.raises(PlanError, match="needs dp\\*tp\\*pp\\*cp=4 processes, --nproc is 2"):
        launch(_config(Strategy(dp=2, tp=2)), 2)


def test_meshplan_run_cli_executes_a_written_plan(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from meshplan.cli.main import app

    runner = CliRunner()
    plan = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", "--model", "Llama-3.1-8B", "--gpu", "H100", "--num-gpus", "8", "--global-batch",
                            "64", "--seq-len", "4096", "--tp", "2", "--pp", "2", "--no-cp", "--out", str(plan)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["run", str(plan), "--model", "tiny", "--nproc", "4", "--steps", "2", "--json"])
    if r.exit_code == 1 and "run failed" in r.stderr:  # see _once_more_if_killed
        r = runner.invoke(app, ["run", str(plan), "--model", "tiny", "--nproc", "4", "--steps", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["world_size"] == 4 and out["config"]["strategy"]["tp"] == 2 and out["config"]["strategy"]["pp"] == 2
    assert out["max_loss_rel_diff"] <= TOLERANCE
    r = runner.invoke(app, ["run", str(plan), "--model", "tiny", "--nproc", "3"])
    assert r.exit_code == 2 and "not a multiple of tp*pp*cp=4" in r.stderr
