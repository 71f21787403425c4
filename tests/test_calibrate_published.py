"""`meshplan calibrate --published`: the datasheet layer's factors fitted to the published runs shipped with meshplan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_measure_hardware import make_profile
from test_measure_loop import JOB, TRUE_GEMM, Machine
from typer.testing import CliRunner

from meshplan.calibrate.fit import published_measurements
from meshplan.cli.main import app
from meshplan.cost.efficiency import Efficiency, default_efficiency
from meshplan.measure.hardware import load_profile, write_profile
from meshplan.measure.store import Store
from meshplan.measure.validate import validate


def test_published_fit_reproduces_the_shipped_factors(tmp_path: Path) -> None:
    """The shipped factors (meshplan/data/efficiency/training.json) were fitted by benchmarks/fit_training.py to the
    same runs: refitting from them must land on them again (a fixed point), within their rounding to 4 digits."""
    out = tmp_path / "eff.json"
    r = CliRunner().invoke(app, ["calibrate", "--published", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"fitted to {len(published_measurements())} published training runs" in r.output
    fitted, shipped = Efficiency.model_validate_json(out.read_text()), default_efficiency()
    assert fitted.gemm.keys() == shipped.gemm.keys() == {"volta", "ampere", "hopper"}
    for arch, value in shipped.gemm.items():
        assert fitted.gemm[arch] == pytest.approx(value, abs=2e-3)
        assert 0 < fitted.gemm_uncertainty[arch] < 0.5
    assert "published" in fitted.source


def test_published_fit_is_recorded_beside_the_local_calibration(tmp_path: Path) -> None:
    profile = make_profile()
    write_profile(profile, tmp_path / "hw.json")
    with Store(tmp_path / "m.db") as store:
        validate(JOB, profile, top_k=None, store=store, runner=Machine(profile))
    out = tmp_path / "cal.json"
    r = CliRunner().invoke(app, ["calibrate", "--published", "--hardware", str(tmp_path / "hw.json"),
                                 "--db", str(tmp_path / "m.db"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "published training runs" in r.output and "fitted to 24 runs of hardware" in r.output
    cal = load_profile(out)
    assert cal.calibration is not None and cal.efficiency is not None
    published = cal.calibration["published"]
    assert published["runs"] == len(published_measurements())
    assert published["fitted"]["gemm.hopper"]["value"] == pytest.approx(default_efficiency().gemm["hopper"], abs=2e-3)
    # the local fit is not touched by the GPU runs: the simulated machine's GEMM factor (the weak prior costs ~3%)
    assert cal.calibration["fitted"]["gemm"]["value"] == pytest.approx(TRUE_GEMM, rel=0.03)
    assert set(cal.efficiency.gemm) == {"cpu"}
    assert json.loads(out.read_text())["calibration"]["published"]["median_abs_error_after"] < 0.15


def test_published_fit_bad_out(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["calibrate", "--published", "--out", str(tmp_path)])  # a folder, not a file
    assert r.exit_code == 2 and "choose another --out" in r.output
