"""The throttle: the WAL bound (batches wait while a WAL past it cannot be emptied) and checkpoints."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from helpers import user_snapshot

from liteshift.core import throttle as throttle_module
from liteshift.core.errors import DatabaseLocked
from liteshift.core.migrations import Rebuild
from liteshift.core.throttle import MB, Throttle
from liteshift.rebuild import online


def _db(path: Path, rows: int = 3000) -> Path:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", ((i, "x" * 200) for i in range(1, rows + 1)))
    con.close()
    return path


def _pin(db: Path) -> sqlite3.Connection:
    """A reader holding a snapshot: no checkpoint can copy the frames written after it."""
    reader = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()
    return reader


def _write(con: sqlite3.Connection, n: int) -> None:
    con.execute("BEGIN IMMEDIATE")
    con.execute("UPDATE t SET v = v || 'y' WHERE id <= ?", (n,))
    con.execute("COMMIT")


def test_a_wal_that_a_reader_keeps_long_stops_the_batches_with_one_message(tmp_path: Path) -> None:
    db = _db(tmp_path / "w.db")
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA wal_autocheckpoint = 0")
    reader = _pin(db)
    _write(con, 3000)
    frames = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    before = user_snapshot(db)
    throttle = Throttle(wal_limit_mb=0.1, wal_wait_s=0.3)
    with pytest.raises(DatabaseLocked) as err:
        throttle.bound_wal(con, poll_s=0.05)
    size = frames * 4096 / MB
    assert str(err.value) == (
        f"The WAL stayed at {size:,.1f} MB, over the 0.1 MB bound, for 0.3 s: {frames:,} of its "
        f"{frames:,} frames could not be copied into the database: a reader holds an old snapshot, "
        "so liteshift stopped adding to the WAL. "
        "Try: end the long read transaction (or raise --wal-limit), then run again"
    )
    assert throttle.wal_peak_bytes == frames * 4096 > 0.1 * MB and throttle.wal_paused_s > 0
    reader.execute("COMMIT")
    assert user_snapshot(db) == before
    con.close()


def test_the_batches_go_on_once_the_reader_ends(tmp_path: Path) -> None:
    db = _db(tmp_path / "w.db")
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA wal_autocheckpoint = 0")
    reader = _pin(db)
    _write(con, 3000)
    done = threading.Event()
    ender = threading.Timer(0.3, lambda: (reader.execute("COMMIT"), done.set()))
    ender.start()
    throttle = Throttle(wal_limit_mb=0.1, wal_wait_s=60)
    throttle.bound_wal(con, poll_s=0.05)
    assert done.is_set() and throttle.wal_paused_s > 0  # it waited for the reader, then went on
    _, frames, copied = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert frames == copied  # every frame copied: the next write starts the WAL afresh
    reader.close()
    con.close()


def test_a_long_wal_that_checkpoints_empty_or_no_bound_never_waits(tmp_path: Path) -> None:
    db = _db(tmp_path / "w.db")
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA wal_autocheckpoint = 0")
    _write(con, 3000)
    throttle = Throttle(wal_limit_mb=0.1, wal_wait_s=0)
    throttle.bound_wal(con)  # no reader: the checkpoint copies every frame
    assert throttle.wal_peak_bytes > 0.1 * MB and throttle.wal_paused_s == 0
    reader = _pin(db)
    _write(con, 3000)
    unbounded = Throttle(wal_limit_mb=0, wal_wait_s=0)
    unbounded.bound_wal(con)  # 0: no bound, only the peak measured
    assert unbounded.wal_peak_bytes > 0.1 * MB and unbounded.wal_paused_s == 0
    reader.execute("COMMIT")
    con.close()


def test_an_online_copy_waits_for_the_wal_and_stops_before_growing_it_past_the_bound(tmp_path: Path) -> None:
    db = _db(tmp_path / "w.db", rows=20_000)
    before = user_snapshot(db)
    spec = Rebuild("t", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    con = sqlite3.connect(db, isolation_level=None)
    state = online.start_online(con, spec, "001", str(db), 5000)
    reader = _pin(db)
    throttle = Throttle(rows=2000, wal_limit_mb=0.5, wal_wait_s=0.3)
    with pytest.raises(
        DatabaseLocked, match=r"^The WAL stayed at [\d.]+ MB, over the 0.5 MB bound, for 0.3 s"
    ):
        online.copy_online(con, state, str(db), 5000, throttle)
    copied = state.stats.rows
    assert 0 < copied < 20_000  # it stopped part way, at the first batch past the bound
    assert throttle.wal_peak_bytes > 0.5 * MB
    reader.execute("COMMIT")
    assert user_snapshot(db) == before  # the application's table untouched
    # The reader gone, the copy resumes where it stopped and finishes.
    resumed = online.start_online(con, spec, "001", str(db), 5000)
    online.copy_online(con, resumed, str(db), 5000, Throttle(rows=2000, wal_limit_mb=0.5))
    assert state.stats.rows + resumed.stats.rows == 20_000
    online.abandon_online(con, "t", str(db), 5000)
    con.close()


def _copy_watched(db: Path, own: bool, monkeypatch) -> tuple[list[tuple[str, int]], int, int]:
    """Copy t online in 2,000-row batches; what happened between batches, how many, and the
    connection's automatic checkpoint setting afterwards."""
    spec = Rebuild("t", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA wal_autocheckpoint = 700")
    state = online.start_online(con, spec, "001", str(db), 5000)
    events: list[tuple[str, int]] = []
    checkpoint = Throttle.bound_wal

    def bound(self: Throttle, c: sqlite3.Connection, poll_s: float = 0.5) -> None:
        events.append(("checkpoint", c.execute("PRAGMA wal_autocheckpoint").fetchone()[0]))
        checkpoint(self, c, poll_s)
        _, frames, copied = c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert frames == copied  # the batch's pages are in the database before the pause

    monkeypatch.setattr(Throttle, "bound_wal", bound)
    monkeypatch.setattr(throttle_module.time, "sleep", lambda s: events.append(("pause", 0)))
    throttle = Throttle(rows=2000, max_rows=2000, own_checkpoints=own)
    online.copy_online(con, state, str(db), 5000, throttle, check=False)
    setting = con.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    con.close()
    return events, state.stats.batches, setting


def test_a_batched_copy_checkpoints_after_each_commit_then_pauses(tmp_path: Path, monkeypatch) -> None:
    """SQLite's automatic checkpoint is off on liteshift's connection during the copy: it would run
    inside liteshift's COMMIT (counted as lock time and paused for again) or inside the
    application's next one. liteshift checkpoints right after each COMMIT, before its pause, and
    again after it, so that its next write finds the WAL copied and starts it afresh."""
    events, batches, setting = _copy_watched(_db(tmp_path / "c.db", rows=20_000), True, monkeypatch)
    assert batches == 11  # ten full batches, then the one that finds the end
    # The batch's pages, the pause, then what the application wrote meanwhile.
    assert events[: 3 * 10] == [("checkpoint", 0), ("pause", 0), ("checkpoint", 0)] * 10
    assert setting == 700  # given back

    # Asked not to, it leaves the checkpoints to SQLite.
    events, batches, setting = _copy_watched(_db(tmp_path / "d.db", rows=20_000), False, monkeypatch)
    assert events[:2] == [("pause", 0), ("checkpoint", 700)] and setting == 700
