"""The built-in catalogs: model presets and GPUs, one JSON file each under `meshplan/data/`.

Nothing is read at import time; each loader reads its files on first call.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from meshplan.errors import PlanError, suggest
from meshplan.specs.gpu import GpuSpec
from meshplan.specs.model import ModelSpec


def _data_files(kind: str) -> list[tuple[str, str]]:
    folder = resources.files("meshplan") / "data" / kind
    return sorted((f.name, f.read_text(encoding="utf-8")) for f in folder.iterdir() if f.name.endswith(".json"))


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


@lru_cache(maxsize=1)
def gpu_catalog() -> dict[str, GpuSpec]:
    """Every GPU of the catalog by canonical name, in file order."""
    gpus = [GpuSpec.model_validate_json(text) for _, text in _data_files("gpus")]
    return {g.name: g for g in gpus}


@lru_cache(maxsize=1)
def model_catalog() -> dict[str, ModelSpec]:
    """Every model preset by name."""
    models = [ModelSpec.model_validate_json(text) for _, text in _data_files("models")]
    return {m.name: m for m in models}


def load_gpu(name: str) -> GpuSpec:
    """A GPU by name or alias (case-insensitive)."""
    by_key: dict[str, GpuSpec] = {}
    for gpu in gpu_catalog().values():
        for n in (gpu.name, *gpu.aliases):
            by_key[_key(n)] = gpu
    if _key(name) in by_key:
        return by_key[_key(name)]
    names = [n for g in gpu_catalog().values() for n in (g.name, *g.aliases)]
    raise PlanError(f"unknown GPU {name!r}.{suggest(name, names)} `meshplan gpus` lists them all")


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A model preset by name (case-insensitive), or a Hugging Face `config.json` by path."""
    from meshplan.specs.hf_config import model_from_hf_config  # local: only for paths

    text = str(name_or_path)
    by_key = {_key(n): m for n, m in model_catalog().items()}
    if _key(text) in by_key:
        return by_key[_key(text)]
    path = Path(text)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PlanError(f"model directory {text!r} has no config.json; pass the config file itself or a preset name")
        path = path / "config.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise PlanError(f"model file {text!r} cannot be read ({exc.strerror}); check its permissions") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlanError(f"model file {text!r} is not valid JSON ({exc}); pass a Hugging Face config.json") from None
        return model_from_hf_config(config, name=path.parent.name if path.name == "config.json" else path.stem)
    looks_like_path = text.endswith(".json") or "/" in text
    if looks_like_path:
        raise PlanError(f"model file {text!r} does not exist; pass an existing config.json or a preset name")
    raise PlanError(f"unknown model {text!r}.{suggest(text, model_catalog())} `meshplan models` lists the presets")
