"""Reading the published-run CSV files shipped in `meshplan/data/published/`."""

from __future__ import annotations

import csv
import io
from importlib import resources
from pathlib import Path


def published_rows(name: str, path: Path | None = None) -> list[dict[str, str]]:
    """The rows of `path`, or of the packaged `data/published/<name>` when no path is given."""
    if path is None:
        text = (resources.files("meshplan") / "data" / "published" / name).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))
