"""The SQLite measurement store: records round-trip, default location, schema versions, concurrent writers."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from meshplan.errors import PlanError
from meshplan.measure.store import STORE_SCHEMA_VERSION, RunRecord, Store, default_db_path
from meshplan.measure.validate import LOCAL_MODELS
from meshplan.strategy import Strategy


def record(i: int, session: str = "s1", status: str = "ok") -> RunRecord:
    ok = status == "ok"
    return RunRecord(session=session, hardware_fingerprint="abc", software={"meshplan": "0.1.0", "torch": "2.13.0"},
                     model=LOCAL_MODELS["tiny"], strategy=Strategy(dp=2, tp=2, zero=3, sequence_parallel=True),
                     num_processes=4, global_batch=4, seq_len=32, steps=3, knowledge_layer="measured profile",
                     predicted_step_time_s=0.1 * (i + 1), predicted_peak_memory_bytes=1e6, status=status,  # type: ignore[arg-type]
                     measured_step_time_s=0.2 * (i + 1) if ok else None,
                     measured_peak_memory_bytes=2e6 if ok else None, error=None if ok else "rank 1 failed: boom")


def test_records_round_trip_with_filters(tmp_path: Path) -> None:
    with Store(tmp_path / "m.db") as store:
        ids = [store.add(record(0)), store.add(record(1, status="failed")), store.add(record(2, session="s2"))]
        assert ids == [1, 2, 3]
        everything = store.records()
        assert [r.id for r in everything] == ids
        assert everything[0] == record(0).model_copy(update={"id": 1, "created_at": everything[0].created_at})
        assert [r.error for r in store.records(status="failed")] == ["rank 1 failed: boom"]
        assert len(store.records(session="s2")) == 1
        assert store.records(hardware_fingerprint="other") == []
    mode = sqlite3.connect(tmp_path / "m.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_default_location_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHPLAN_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_db_path() == tmp_path / "data" / "meshplan" / "measurements.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_db_path() == tmp_path / ".local" / "share" / "meshplan" / "measurements.db"
    monkeypatch.setenv("MESHPLAN_DB", str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"


def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with Store(path) as store:
        store.add(record(0))
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (STORE_SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(PlanError, match=f"schema version {STORE_SCHEMA_VERSION + 1}, newer"):
        Store(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1  # nothing lost
    conn.close()


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(PlanError, match="not a readable SQLite database"):
        Store(path)


def _writer(path: str, worker: int, count: int) -> None:
    with Store(path) as store:
        for i in range(count):
            store.add(record(i, session=f"w{worker}"))


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "m.db")
    Store(path).close()
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_writer, args=(path, w, 15)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
        assert p.exitcode == 0
    with Store(path) as store:
        rows = store.records()
    assert len(rows) == 60 and len({r.id for r in rows}) == 60
    assert sorted({r.session for r in rows}) == ["w0", "w1", "w2", "w3"]
    assert all(len(store_rows) == 15 for store_rows in ([r for r in rows if r.session == f"w{w}"] for w in range(4)))
