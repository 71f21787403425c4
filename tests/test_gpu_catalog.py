"""The built-in GPU catalog: every required GPU, its aliases, its sources, and datasheet anchors."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from meshplan.errors import PlanError
from meshplan.specs import GpuSpec, gpu_catalog, load_gpu

REQUIRED: dict[str, tuple[str, ...]] = {
    "V100-16GB": ("V100-SXM2-16GB",),
    "V100-32GB": ("V100", "V100-SXM2-32GB"),
    "A100-40GB": ("A100-SXM4-40GB",),
    "A100-80GB": ("A100", "A100-SXM-80GB", "A100-SXM4-80GB"),
    "H100-SXM": ("H100", "H100-80GB", "H100-SXM5", "H100-80GB-SXM", "H100-80GB-HBM3"),
    "H100-PCIe": (),
    "H800": (),
    "H200": ("H200-SXM",),
    "B200": (),
    "GB200": (),
    "MI300X": (),
    "L40S": (),
    "A10G": (),
    "RTX-4090": (),
}

SOURCE_KEYS = ("peak_flops", "hbm_bytes", "hbm_bytes_per_s", "intra_node_bytes_per_s", "default_inter_node_bytes_per_s")
NVLINK_GPUS = ("V100-16GB", "V100-32GB", "A100-40GB", "A100-80GB", "H100-SXM", "H800", "H200", "B200", "GB200")
PCIE_GPUS = ("H100-PCIe", "L40S", "A10G", "RTX-4090")


def _raw_files() -> dict[str, dict]:
    folder = resources.files("meshplan") / "data" / "gpus"
    return {f.name: json.loads(f.read_text(encoding="utf-8")) for f in folder.iterdir() if f.name.endswith(".json")}


def _close(actual: float, expected: float, rel: float = 0.01) -> bool:
    return actual == pytest.approx(expected, rel=rel)


# --- presence and lookup -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_required_gpu_loads_by_canonical_name(name: str) -> None:
    gpu = load_gpu(name)
    assert isinstance(gpu, GpuSpec)
    assert gpu.name == name
    assert name in gpu_catalog()


@pytest.mark.parametrize(("name", "alias"), [(n, a) for n, aliases in sorted(REQUIRED.items()) for a in aliases])
def test_required_alias_resolves(name: str, alias: str) -> None:
    assert alias in load_gpu(name).aliases
    for spelling in (alias, alias.lower(), alias.upper()):
        assert load_gpu(spelling).name == name


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_lookup_is_case_insensitive(name: str) -> None:
    assert load_gpu(name.lower()).name == name
    assert load_gpu(name.upper()).name == name
    assert load_gpu(name.replace("-", "_")).name == name


def test_file_names_are_lower_case_canonical_names() -> None:
    files = _raw_files()
    assert sorted(files) == sorted(f"{d['name'].lower()}.json" for d in files.values())
    assert set(REQUIRED) <= {d["name"] for d in files.values()}


def test_every_file_validates_and_names_are_unique() -> None:
    files = _raw_files()
    specs = [GpuSpec.model_validate(d) for d in files.values()]
    assert len({s.name for s in specs}) == len(specs)
    keys = [n.lower().replace("_", "-").replace(" ", "") for s in specs for n in (s.name, *s.aliases)]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicated, f"names or aliases used twice: {duplicated}"


@pytest.mark.parametrize("file_name", sorted(_raw_files()))
def test_every_file_cites_every_figure(file_name: str) -> None:
    sources = _raw_files()[file_name]["sources"]
    missing = [k for k in SOURCE_KEYS if not str(sources.get(k, "")).strip()]
    assert not missing, f"{file_name} lacks sources for {missing}"
    assert all(len(v) >= 20 for v in sources.values()), "each source should be a real citation, not a stub"


def test_unknown_gpu_suggests_the_close_name() -> None:
    with pytest.raises(PlanError) as info:
        load_gpu("H10")
    message = str(info.value)
    assert "H10" in message
    assert "H100" in message


def test_unknown_gpu_without_close_match_still_raises() -> None:
    with pytest.raises(PlanError, match="unknown GPU"):
        load_gpu("definitely-not-a-gpu-zzz")


# --- internal consistency ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_precision_ladder(name: str) -> None:
    flops = load_gpu(name).peak_flops
    assert flops, "every GPU has at least one dtype"
    assert all(v > 0 for v in flops.values())
    if "fp4" in flops:
        assert flops["fp4"] >= flops["fp8"]
    if "fp8" in flops:
        assert flops["fp8"] >= flops["bf16"]
    if "bf16" in flops:
        assert flops["bf16"] == flops["fp16"]
    if "bf16" in flops and "tf32" in flops:
        assert flops["bf16"] >= flops["tf32"]
    if "tf32" in flops and "fp32" in flops:
        assert flops["tf32"] >= flops["fp32"]


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_peak_returns_table_value(name: str) -> None:
    gpu = load_gpu(name)
    for dtype, value in gpu.peak_flops.items():
        assert gpu.peak(dtype) == value


def test_hopper_variants_share_compute() -> None:
    h100 = load_gpu("H100-SXM")
    for other in ("H200", "H800"):
        assert load_gpu(other).peak_flops == h100.peak_flops
    assert load_gpu("H200").peak("bf16") == h100.peak("bf16") == load_gpu("H800").peak("bf16")


def test_hbm_bandwidth_grows_by_generation() -> None:
    bw = {n: load_gpu(n).hbm_bytes_per_s for n in ("V100-32GB", "A100-80GB", "H100-SXM", "H200", "B200")}
    assert bw["V100-32GB"] < bw["A100-80GB"] < bw["H100-SXM"] < bw["H200"] < bw["B200"]
    assert load_gpu("A100-40GB").hbm_bytes_per_s < load_gpu("A100-80GB").hbm_bytes_per_s


def test_bf16_grows_by_generation() -> None:
    bf16 = [load_gpu(n).peak("bf16") for n in ("A100-80GB", "H100-SXM", "B200", "GB200")]
    assert bf16 == sorted(bf16)
    assert len(set(bf16)) == len(bf16)


@pytest.mark.parametrize("name", NVLINK_GPUS + ("MI300X",))
def test_scale_up_link_beats_scale_out(name: str) -> None:
    gpu = load_gpu(name)
    assert gpu.intra_node_bytes_per_s > 2 * gpu.default_inter_node_bytes_per_s


@pytest.mark.parametrize("name", PCIE_GPUS)
def test_pcie_cards_have_pcie_scale_up(name: str) -> None:
    gpu = load_gpu(name)
    assert "PCIe" in gpu.intra_node_link
    assert gpu.intra_node_bytes_per_s <= 64e9
    assert gpu.intra_node_bytes_per_s > gpu.default_inter_node_bytes_per_s


def test_h800_nvlink_is_cut_but_compute_is_not() -> None:
    assert load_gpu("H800").intra_node_bytes_per_s < load_gpu("H100-SXM").intra_node_bytes_per_s
    assert load_gpu("H800").hbm_bytes == load_gpu("H100-SXM").hbm_bytes


def test_per_direction_link_figures() -> None:
    # Bidirectional datasheet figures halved: NVLink 2/3/4/5 = 300/600/900/1800 GB/s bidirectional.
    assert load_gpu("V100-32GB").intra_node_bytes_per_s == pytest.approx(150e9)
    assert load_gpu("A100-80GB").intra_node_bytes_per_s == pytest.approx(300e9)
    assert load_gpu("H100-SXM").intra_node_bytes_per_s == pytest.approx(450e9)
    assert load_gpu("H800").intra_node_bytes_per_s == pytest.approx(200e9)
    assert load_gpu("B200").intra_node_bytes_per_s == pytest.approx(900e9)
    assert load_gpu("GB200").intra_node_bytes_per_s == pytest.approx(900e9)
    assert load_gpu("MI300X").intra_node_bytes_per_s == pytest.approx(7 * 64e9)
    assert load_gpu("H100-PCIe").intra_node_bytes_per_s == pytest.approx(64e9)


def test_default_systems() -> None:
    assert load_gpu("GB200").default_gpus_per_node == 72
    assert load_gpu("V100-32GB").default_gpus_per_node == 16
    for name in sorted(set(REQUIRED) - {"GB200", "V100-32GB"}):
        assert load_gpu(name).default_gpus_per_node == 8, name
    assert load_gpu("A100-80GB").default_inter_node_bytes_per_s == pytest.approx(25e9)
    for name in ("H100-SXM", "H200", "H800", "B200"):
        assert load_gpu(name).default_inter_node_bytes_per_s == pytest.approx(50e9), name
    assert load_gpu("V100-32GB").default_inter_node_bytes_per_s == pytest.approx(8 * 12.5e9 / 16)
    assert load_gpu("A10G").default_inter_node_bytes_per_s == pytest.approx(100e9 / 8 / 8)
    for name in sorted(REQUIRED):
        assert load_gpu(name).default_system.strip()


def test_vendor_and_architecture() -> None:
    assert load_gpu("MI300X").vendor == "amd"
    assert load_gpu("MI300X").architecture == "cdna3"
    expected = {
        "V100-32GB": "volta",
        "A100-80GB": "ampere",
        "A10G": "ampere",
        "L40S": "ada",
        "RTX-4090": "ada",
        "H100-SXM": "hopper",
        "H800": "hopper",
        "B200": "blackwell",
        "GB200": "blackwell",
    }
    for name, arch in expected.items():
        assert load_gpu(name).architecture == arch
        assert load_gpu(name).vendor == "nvidia"


# --- dtype support -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["V100-16GB", "V100-32GB"])
def test_volta_has_no_bf16(name: str) -> None:
    gpu = load_gpu(name)
    assert "bf16" not in gpu.peak_flops
    assert "tf32" not in gpu.peak_flops
    with pytest.raises(PlanError, match="bf16"):
        gpu.peak("bf16")
    assert gpu.peak("fp16") == pytest.approx(125e12)


def test_fp8_and_fp4_support_by_generation() -> None:
    for name in ("V100-32GB", "A100-40GB", "A100-80GB", "A10G"):
        assert "fp8" not in load_gpu(name).peak_flops, name
        with pytest.raises(PlanError):
            load_gpu(name).peak("fp8")
    for name in ("H100-SXM", "H100-PCIe", "H800", "H200", "L40S", "RTX-4090", "MI300X", "B200", "GB200"):
        assert "fp8" in load_gpu(name).peak_flops, name
    fp4 = {n for n in REQUIRED if "fp4" in load_gpu(n).peak_flops}
    assert fp4 == {"B200", "GB200"}


# --- published anchors ---------------------------------------------------------------------------

ANCHORS_FLOPS = [
    ("V100-32GB", "fp16", 125e12),
    ("V100-32GB", "fp32", 15.7e12),
    ("A100-80GB", "bf16", 312e12),
    ("A100-40GB", "tf32", 156e12),
    ("A100-80GB", "fp32", 19.5e12),
    ("H100-SXM", "bf16", 989e12),
    ("H100-SXM", "fp8", 1979e12),
    ("H100-SXM", "tf32", 494.5e12),
    ("H100-PCIe", "bf16", 756e12),
    ("H100-PCIe", "fp8", 1513e12),
    ("H200", "bf16", 989e12),
    ("H800", "bf16", 989e12),
    ("B200", "bf16", 2.25e15),
    ("B200", "fp8", 4.5e15),
    ("B200", "fp4", 9e15),
    ("GB200", "bf16", 2.5e15),
    ("GB200", "fp8", 5e15),
    ("GB200", "fp4", 10e15),
    ("MI300X", "bf16", 1307.4e12),
    ("MI300X", "fp8", 2614.9e12),
    ("L40S", "bf16", 362.05e12),
    ("L40S", "fp8", 733e12),
    ("A10G", "bf16", 70e12),
    ("RTX-4090", "bf16", 165.2e12),
    ("RTX-4090", "fp8", 330.3e12),
]


@pytest.mark.parametrize(("name", "dtype", "value"), ANCHORS_FLOPS)
def test_dense_flops_anchor(name: str, dtype: str, value: float) -> None:
    assert _close(load_gpu(name).peak(dtype), value), f"{name} {dtype}"


ANCHORS_MEMORY = [
    ("V100-16GB", 16e9, 900e9),
    ("V100-32GB", 32e9, 900e9),
    ("A100-40GB", 40e9, 1555e9),
    ("A100-80GB", 80e9, 2039e9),
    ("H100-SXM", 80e9, 3.35e12),
    ("H100-PCIe", 80e9, 2.0e12),
    ("H800", 80e9, 3.35e12),
    ("H200", 141e9, 4.8e12),
    ("B200", 180e9, 7.7e12),
    ("GB200", 186e9, 8.0e12),
    ("MI300X", 192e9, 5.3e12),
    ("L40S", 48e9, 864e9),
    ("A10G", 24e9, 600e9),
    ("RTX-4090", 24e9, 1008e9),
]


@pytest.mark.parametrize(("name", "capacity", "bandwidth"), ANCHORS_MEMORY)
def test_memory_anchor(name: str, capacity: float, bandwidth: float) -> None:
    gpu = load_gpu(name)
    assert _close(gpu.hbm_bytes, capacity), f"{name} capacity"
    assert _close(gpu.hbm_bytes_per_s, bandwidth), f"{name} bandwidth"


def test_flops_are_dense_not_sparse() -> None:
    # Sparse marketing numbers would be exactly twice these; guard against copying them.
    assert load_gpu("H100-SXM").peak("bf16") < 1.2e15
    assert load_gpu("A100-80GB").peak("bf16") < 400e12
    assert load_gpu("B200").peak("fp4") < 10e15
    assert load_gpu("MI300X").peak("bf16") < 1.5e15
