"""Maintenance actions: each acts and verifies in one transaction (VACUUM apart), and undoes
itself when the verification fails; bad requests are refused before anything is written."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import snapshot

from liteshift.core.errors import BadInput
from liteshift.core.migrations import Query
from liteshift.core.window import OutsideWindow, WindowTooShort
from liteshift.health import maintenance
from liteshift.health.maintenance import Request


def _scattered(path: Path, rows: int = 20_000, auto_vacuum: str = "NONE") -> Path:
    """An indexed table with 40% of its rows deleted at random: its index pages are part empty."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(f"PRAGMA auto_vacuum = {auto_vacuum}")
    con.execute("PRAGMA journal_mode = WAL")
    con.execute('CREATE TABLE "Event Log" (id INTEGER PRIMARY KEY, kind TEXT, at TEXT)')
    con.execute('CREATE INDEX "idx kind at" ON "Event Log" (kind, at)')
    con.execute('CREATE INDEX idx_at ON "Event Log" (at)')
    rnd = random.Random(7)
    con.execute("BEGIN")
    con.executemany(
        'INSERT INTO "Event Log" (kind, at) VALUES (?, ?)',
        ((f"k{rnd.randrange(50)}", f"2026-01-{rnd.randrange(1, 29):02d}T{i % 24:02d}") for i in range(rows)),
    )
    con.execute("COMMIT")
    con.execute("BEGIN")
    con.execute('DELETE FROM "Event Log" WHERE abs(random()) % 10 < 4')
    con.execute("COMMIT")
    con.close()
    return path


def _unused_pct(path: Path, index: str) -> float:
    con = sqlite3.connect(path)
    try:
        size, unused = con.execute(
            "SELECT sum(pgsize), sum(unused) FROM dbstat WHERE name = ?", (index,)
        ).fetchone()
        return 100.0 * unused / size
    finally:
        con.close()


def _run(req: Request) -> maintenance.Maintenance:
    maintenance.check_request(req)
    return maintenance.act(req, None)


QUERY = Query("by_kind", "SELECT count(*) FROM \"Event Log\" WHERE kind = 'k7'", '"idx kind at"')


def test_reindex_compacts_the_index_and_verifies(tmp_path: Path) -> None:
    db = _scattered(tmp_path / "app.db")
    before = _unused_pct(db, "idx kind at")
    rows = snapshot(db)
    result = _run(Request(db, "reindex", ("idx kind at",), queries=(QUERY,), query_budget_s=0.05))
    assert result.status == "completed", result.message
    assert before > 25 and _unused_pct(db, "idx kind at") < before / 2
    assert result.verified[0] == "integrity_check(Event Log): ok"
    assert "by_kind" in result.queries
    assert snapshot(db) == rows  # no row and no definition changed


def test_analyze_writes_statistics(tmp_path: Path) -> None:
    db = _scattered(tmp_path / "app.db")
    result = _run(Request(db, "analyze", ("Event Log",)))
    assert result.status == "completed"
    con = sqlite3.connect(db)
    assert {r[0] for r in con.execute("SELECT idx FROM sqlite_stat1")} == {"idx kind at", "idx_at"}
    con.close()


def test_a_failed_verification_rolls_the_action_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _scattered(tmp_path / "app.db")
    monkeypatch.setattr(maintenance, "pragma_check", lambda *a: ["row 7 missing from index idx_at"])
    result = _run(Request(db, "analyze", ("Event Log",)))
    assert result.status == "rolled-back"
    assert result.message == (
        "integrity_check(Event Log) failed after analyze: row 7 missing from index idx_at; "
        "the action was rolled back, nothing changed"
    )
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_stat1'").fetchone()[0] == 0
    con.close()


def test_a_slower_query_rolls_the_action_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _scattered(tmp_path / "app.db")
    times = iter([1.0, 5.0])
    monkeypatch.setattr(maintenance, "_median_ms", lambda *a: next(times))
    result = _run(Request(db, "analyze", ("Event Log",), queries=(QUERY,)))
    assert result.status == "rolled-back"
    assert result.message.startswith(
        "Query by_kind got slower after analyze: median 1.000 ms before, 5.000 ms"
    )


def test_killed_after_the_action_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    db = _scattered(tmp_path / "app.db")
    before = snapshot(db)
    code = (
        "import sys; from pathlib import Path; from liteshift.health import maintenance as m; "
        "r = m.Request(Path(sys.argv[1]), 'analyze', ('Event Log',)); m.act(r, None)"
    )
    env = {**os.environ, "LITESHIFT_KILL_AT": "maintenance-acted"}
    done = subprocess.run([sys.executable, "-c", code, str(db)], env=env, timeout=60)
    assert done.returncode == -9
    assert snapshot(db) == before
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_stat1'").fetchone()[0] == 0
    con.close()


def test_unknown_object_is_refused_and_nothing_written(tmp_path: Path) -> None:
    db = _scattered(tmp_path / "app.db")
    before = snapshot(db)
    with pytest.raises(BadInput) as info:
        maintenance.check_request(Request(db, "reindex", ("idx_nope",)))
    assert str(info.value) == (
        f"Cannot reindex 'idx_nope' in {db}: it is not a table or index there. "
        "Try: pass --object with a table or index name"
    )
    assert snapshot(db) == before


def test_full_vacuum_needs_approval(tmp_path: Path) -> None:
    db = _scattered(tmp_path / "app.db")
    with pytest.raises(BadInput) as info:
        maintenance.check_request(Request(db, "vacuum"))
    assert str(info.value) == (
        f"VACUUM of {db} needs approval: auto_vacuum is not INCREMENTAL, so free pages come back only "
        "by a full VACUUM, which blocks every writer for its whole length and needs up to twice the "
        "file's size in free disk space. Try: run it in a maintenance window with --approve-vacuum"
    )


def test_approved_vacuum_returns_the_free_pages(tmp_path: Path) -> None:
    db = _scattered(tmp_path / "app.db")
    rows = snapshot(db)
    _run(Request(db, "reindex", ("idx kind at",)))  # leaves free pages behind
    result = _run(Request(db, "vacuum", approve_vacuum=True))
    assert result.status == "completed" and result.mode == "vacuum"
    assert result.freed_bytes > 0 and result.verified[0] == "quick_check: ok"
    assert snapshot(db) == rows


def test_incremental_vacuum_runs_in_a_transaction_without_approval(tmp_path: Path) -> None:
    db = _scattered(tmp_path / "app.db", auto_vacuum="INCREMENTAL")
    _run(Request(db, "reindex", ("idx_at",)))
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA freelist_count").fetchone()[0] > 0
    con.close()
    result = _run(Request(db, "vacuum"))
    assert result.mode == "incremental" and result.freed_bytes > 0
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA freelist_count").fetchone()[0] == 0
    con.close()


def test_the_window_refuses_outside_and_when_the_prediction_does_not_fit(tmp_path: Path) -> None:
    db = _scattered(tmp_path / "app.db")
    now = datetime.now(UTC)
    closed = f"daily {(now.hour + 2) % 24:02d}:00-{(now.hour + 3) % 24:02d}:00 UTC"
    with pytest.raises(OutsideWindow):
        maintenance.window_check(Request(db, "analyze", maintenance_window=closed), [])
    open_now = f"daily {now.hour:02d}:00-{(now.hour + 1) % 24:02d}:00 UTC"
    with pytest.raises(WindowTooShort) as info:
        maintenance.window_check(
            Request(db, "analyze", maintenance_window=open_now), [7200.0, 7300.0, 7400.0]
        )
    assert "predicted to take 7300.0 s (median of 3 earlier run(s))" in str(info.value)
    got = maintenance.window_check(Request(db, "analyze", maintenance_window=open_now), [])
    assert got == "no prediction (no earlier run of this action on this database)"


def test_vacuum_is_predicted_by_a_rehearsal_on_a_copy(tmp_path: Path) -> None:
    db = _scattered(tmp_path / "app.db")
    seconds, basis = maintenance.predict(Request(db, "vacuum", approve_vacuum=True), [])
    assert basis == "rehearsal: VACUUM INTO a copy" and seconds is not None and seconds > 0
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("app.db")) == []
