"""Hardware profiles: the fits, the file format and its faults, and the specs the planner builds from a profile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from meshplan.cli.main import app
from meshplan.cost.comm import Links, all_gather_time, all_reduce_time, p2p_time
from meshplan.errors import PlanError
from meshplan.estimator import estimate
from meshplan.measure.hardware import (
    CollectivePoint,
    DeviceInfo,
    GemmPoint,
    HardwareProfile,
    LinkTier,
    device_fingerprint,
    load_profile,
    local_cluster,
    local_gpu,
    profile_efficiency,
    write_profile,
)
from meshplan.measure.profile import fit_flops_curve, fit_link

ALPHA = 50e-6  # s
BANDWIDTH = 2e9  # bytes/s


def make_profile(peak: float = 40e9, half: float = 8.0, bandwidth: float = 4e9, nproc: int = 4) -> HardwareProfile:
    device = DeviceInfo(kind="cpu", name="test cpu", architecture="cpu", vendor="other", backend="gloo",
                        num_processes=nproc, host="h", logical_cores=2, memory_bytes_per_process=64e9,
                        torch_version="2.13.0+cpu")
    link = LinkTier(latency_s=ALPHA, bytes_per_s=BANDWIDTH, rms_relative_error=0.0, num_points=3)
    points = [GemmPoint(m=s, n=s, k=s, dtype="float32", flops_per_s=peak * (s / 6) / (s / 6 + half)) for s in (64, 256, 1024)]
    return HardwareProfile(created_at="2026-01-01T00:00:00+00:00", fingerprint=device_fingerprint(device), device=device,
                           gemm=points, flops={"float32": fit_flops_curve(points)}, memory_bytes_per_s=bandwidth,
                           collectives=[], links={"intra_node": link, "inter_node": link})


def test_flops_curve_recovers_peak_and_half_intensity() -> None:
    # square fp32 GEMM of size s: intensity 2s³ / (4·3s²) = s/6 FLOP/B; rates drawn from F·I/(I + I½)
    profile = make_profile(peak=40e9, half=8.0)
    curve = profile.flops["float32"]
    assert curve.peak_flops_per_s == pytest.approx(40e9, rel=1e-9)
    assert curve.half_intensity == pytest.approx(8.0, rel=1e-9)
    assert curve.rms_relative_error < 1e-9
    assert profile.gemm[0].intensity == pytest.approx(64 / 6)


def test_link_fit_recovers_alpha_beta_of_the_cost_models_collectives() -> None:
    # Timings made by meshplan.cost.comm itself (one tier, every group inside it): the fit's algorithm costs must
    # be the cost model's, so it returns the α and bandwidth that produced them.
    links = Links(intra_bytes_per_s=BANDWIDTH, inter_bytes_per_s=BANDWIDTH, intra_latency_s=ALPHA,
                  inter_latency_s=ALPHA, gpus_per_node=8)
    points = []
    for p in (2, 4, 8):
        for nbytes in (1024, 1 << 20):
            ar = float(all_reduce_time(np.array(float(nbytes)), np.array(float(p)), np.array(1.0), links))
            ag = float(all_gather_time(np.array(float(nbytes)), np.array(float(p)), np.array(1.0), links))
            points += [CollectivePoint(collective="all_reduce", group_size=p, nbytes=nbytes, seconds=ar),
                       CollectivePoint(collective="all_gather", group_size=p, nbytes=nbytes, seconds=ag)]
    sr = float(p2p_time(np.array(65536.0), np.array(False), links))
    points.append(CollectivePoint(collective="send_recv", group_size=2, nbytes=65536, seconds=sr))
    tier = fit_link(points)
    assert tier.latency_s == pytest.approx(ALPHA, rel=1e-6)
    assert tier.bytes_per_s == pytest.approx(BANDWIDTH, rel=1e-6)
    assert tier.num_points == len(points)


def test_round_trip(tmp_path: Path) -> None:
    profile = make_profile()
    write_profile(profile, tmp_path / "hw.json")
    assert load_profile(tmp_path / "hw.json") == profile


@pytest.mark.parametrize("content, words", [
    ('{"format": "meshplan-hardware-profile", "schema_version": 1, "gem', "not valid JSON"),
    ('{"model": "llama"}', "not a meshplan hardware profile"),
    ('[1, 2]', "not a meshplan hardware profile"),
    ('{"format": "meshplan-hardware-profile", "schema_version": 7}', "newer than this meshplan"),
    ('{"format": "meshplan-hardware-profile", "schema_version": 1, "created_at": "x"}', "damaged"),
])
def test_corrupt_or_foreign_profiles_are_refused(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "hw.json"
    path.write_text(content)
    with pytest.raises(PlanError, match=words):
        load_profile(path)


def test_edited_profile_is_refused(tmp_path: Path) -> None:
    raw = json.loads(make_profile().model_dump_json())
    raw["device"]["num_processes"] = 64  # edited by hand: the fingerprint no longer matches
    (tmp_path / "hw.json").write_text(json.dumps(raw))
    with pytest.raises(PlanError, match="fingerprint"):
        load_profile(tmp_path / "hw.json")


def test_missing_profile(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="does not exist.*meshplan profile"):
        load_profile(tmp_path / "nope.json")


def test_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "hw.json"
    old = make_profile(peak=10e9)
    write_profile(old, path)

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("meshplan.measure.hardware.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_profile(make_profile(peak=99e9), path)
    assert load_profile(path) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hw.json"]


def test_local_specs_in_the_cost_models_units() -> None:
    profile = make_profile(peak=40e9, bandwidth=4e9)
    gpu = local_gpu(profile)
    # float32 executor: 4-byte elements where the cost model counts 2 → bandwidths halved; HBM also / 0.85 because
    # the cost model applies its HBM efficiency to the datasheet figure and the profile's is already achieved.
    assert gpu.hbm_bytes_per_s == pytest.approx(4e9 * 0.5 / 0.85)
    assert gpu.peak("bf16") == pytest.approx(40e9)
    cluster = local_cluster(profile, 2)
    assert (cluster.num_gpus, cluster.gpus_per_node, cluster.num_nodes) == (2, 2, 1)
    assert cluster.intra_node_bytes_per_s == pytest.approx(BANDWIDTH * 0.5)
    assert cluster.intra_node_latency_s == ALPHA
    eff = profile_efficiency(profile)
    assert eff.layer == "measured profile"
    assert eff.memory_state_scale == pytest.approx(16 / 18)  # fp32 4+4+8 B/param against 2+4+12
    assert eff.memory_activation_scale == 2.0 and eff.memory_overhead_bytes == 0.0


def test_estimate_says_which_layer_produced_it(tmp_path: Path) -> None:
    write_profile(make_profile(), tmp_path / "hw.json")
    job = {"model": "GPT-3-1.3B", "num_gpus": 4, "global_batch": 4, "seq_len": 128, "zero": 3}
    measured = estimate(**job, hardware=str(tmp_path / "hw.json"))
    fitted = estimate(**job, gpu="H100")
    assert measured.provenance["knowledge_layer"] == "measured profile"
    assert measured.provenance["peak_flops"].startswith("measured profile: local-cpu/4 40.0 GFLOP/s")
    assert fitted.provenance["knowledge_layer"] == "fitted efficiency"
    # 1.3B parameters at 40 GFLOP/s per process cannot be faster than 6·N·tokens / (4 · 40e9)
    assert measured.step_time_s > 6 * 1.3e9 * 4 * 128 / (4 * 40e9)
    with pytest.raises(PlanError, match="--gpu and --hardware"):
        estimate(**job, gpu="H100", hardware=str(tmp_path / "hw.json"))


def test_cli_plan_with_hardware_and_a_corrupt_profile(tmp_path: Path) -> None:
    write_profile(make_profile(), tmp_path / "hw.json")
    runner = CliRunner()
    ok = runner.invoke(app, ["plan", "--model", "GPT-3-1.3B", "--hardware", str(tmp_path / "hw.json"), "--num-gpus", "4",
                             "--global-batch", "8", "--seq-len", "128", "--top-k", "2"])
    assert ok.exit_code == 0, ok.output
    assert "local-cpu/4" in ok.output
    (tmp_path / "bad.json").write_text("{\"format\": \"meshplan-hardware-profile\", \"schema_vers")
    bad = runner.invoke(app, ["estimate", "--model", "GPT-3-1.3B", "--hardware", str(tmp_path / "bad.json"),
                              "--num-gpus", "4", "--global-batch", "8", "--seq-len", "128"])
    assert bad.exit_code == 2
    assert "not valid JSON" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize(("args", "message"), [
    # found by the QA pass: a missing store was created empty and reported as "no runs"
    (["--db", "{tmp}/missing.db"], "measurement store '{tmp}/missing.db' does not exist"),
    (["--db", "{tmp}/junk.db"], "is not a readable SQLite database"),
    (["--db", "{tmp}"], "is not a file"),
    (["--db", "{tmp}/junk.db", "--out", "/nonexistent-qa/hw.json"], "cannot write --out '/nonexistent-qa/hw.json'"),
    (["--hardware", "{tmp}/junk.db"], "not valid JSON"),
])
def test_calibrate_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    write_profile(make_profile(), tmp_path / "hw.json")
    (tmp_path / "junk.db").write_text("not a database")
    argv = ["calibrate", "--hardware", str(tmp_path / "hw.json"), *[a.format(tmp=tmp_path) for a in args]]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2, r.output
    assert message.format(tmp=tmp_path) in r.output and "Traceback" not in r.output
    assert not (tmp_path / "missing.db").exists()
