"""The measurement store: every validated run, predicted and measured, in one SQLite file (standard `sqlite3`).

Default location: $MESHPLAN_DB, else $XDG_DATA_HOME/meshplan/measurements.db (~/.local/share/... without it);
`--db` chooses another. WAL journal (readers never block the writer), a 30 s busy timeout and one short
transaction per record, so several processes writing at once lose nothing. The schema carries its version in
the `schema_version` table; a database from a newer meshplan is refused, never silently rewritten.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field

from meshplan.errors import PlanError
from meshplan.specs.base import Frozen
from meshplan.specs.model import ModelSpec
from meshplan.strategy import Strategy

STORE_SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000  # ms a writer waits for another's transaction before failing

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    session TEXT NOT NULL,
    hardware_fingerprint TEXT NOT NULL,
    software TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model TEXT NOT NULL,
    strategy_label TEXT NOT NULL,
    strategy TEXT NOT NULL,
    num_processes INTEGER NOT NULL,
    global_batch INTEGER NOT NULL,
    seq_len INTEGER NOT NULL,
    steps INTEGER NOT NULL,
    knowledge_layer TEXT NOT NULL,
    predicted_step_time_s REAL NOT NULL,
    predicted_peak_memory_bytes REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    measured_step_time_s REAL,
    measured_peak_memory_bytes REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_hardware ON runs (hardware_fingerprint, model_name);
"""


class RunRecord(Frozen):
    """One validated run: where and what ran, what the cost model predicted, what was measured (or why it failed)."""

    id: int | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    session: str
    """Groups the records of one `validate` or `tune` invocation."""
    hardware_fingerprint: str
    software: dict[str, str]
    """Versions: meshplan, torch, python."""
    model: ModelSpec
    strategy: Strategy
    num_processes: int = Field(gt=0)
    global_batch: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    steps: int = Field(gt=0)
    knowledge_layer: str
    """Which layer produced the prediction: datasheet, fitted efficiency, measured profile (+ calibrated)."""
    predicted_step_time_s: float
    predicted_peak_memory_bytes: float
    status: Literal["ok", "failed"]
    measured_step_time_s: float | None = None
    measured_peak_memory_bytes: float | None = None
    error: str | None = None
    """Why the run failed (rank and cause), for status 'failed'."""


def default_db_path() -> Path:
    """$MESHPLAN_DB, else $XDG_DATA_HOME/meshplan/measurements.db (XDG base directory spec: ~/.local/share)."""
    if os.environ.get("MESHPLAN_DB"):
        return Path(os.environ["MESHPLAN_DB"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "meshplan" / "measurements.db"


class Store:
    """An open measurement store. Use as a context manager or call `close()`."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        if self.path.exists() and not self.path.is_file():
            raise PlanError(f"measurement store {str(self.path)!r} is not a file; pass --db a file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise PlanError(f"measurement store {str(self.path)!r} is not a readable SQLite database ({exc}); "
                            "pass --db another file or move this one away") from None

    def _migrate(self) -> None:
        with self._transaction() as c:
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    c.execute(statement)
            row = c.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0] if row else None
            if version is None:
                c.execute("INSERT INTO schema_version (version) VALUES (?)", (STORE_SCHEMA_VERSION,))
            elif version > STORE_SCHEMA_VERSION:
                raise PlanError(f"measurement store {str(self.path)!r} has schema version {version}, newer than this "
                                f"meshplan's ({STORE_SCHEMA_VERSION}); upgrade meshplan or pass --db another file")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so no write is lost."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def add(self, record: RunRecord) -> int:
        """Store one record in its own short transaction; returns its id."""
        data = record.model_dump(mode="json", exclude={"id"})
        row = {**data, "software": json.dumps(data["software"]), "model": json.dumps(data["model"]),
               "model_name": record.model.name, "strategy": json.dumps(data["strategy"]),
               "strategy_label": record.strategy.label()}
        columns = ", ".join(row)
        with self._transaction() as c:
            cur = c.execute(f"INSERT INTO runs ({columns}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
            return int(cur.lastrowid or 0)

    def records(self, *, hardware_fingerprint: str | None = None, model_name: str | None = None,
                session: str | None = None, status: str | None = None) -> list[RunRecord]:
        """Stored records, oldest first, optionally filtered."""
        where, args = [], []
        for column, value in (("hardware_fingerprint", hardware_fingerprint), ("model_name", model_name),
                              ("session", session), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
        self._conn.row_factory = sqlite3.Row
        try:
            rows = self._conn.execute(sql, args).fetchall()
        finally:
            self._conn.row_factory = None
        return [_record(dict(r)) for r in rows]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _record(row: dict[str, Any]) -> RunRecord:
    row.pop("model_name")
    row.pop("strategy_label")
    return RunRecord.model_validate({**row, "software": json.loads(row["software"]), "model": json.loads(row["model"]),
                                     "strategy": json.loads(row["strategy"])})
