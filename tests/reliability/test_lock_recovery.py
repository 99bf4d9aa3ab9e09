"""A killed run's lock never blocks the next run, and a nothing-to-do run clears it."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time

from checks import lock_row

from liteshift.core import lock


def _plant(db, pid, heartbeat=None):
    con = sqlite3.connect(db, isolation_level=None)
    con.execute(lock.LOCK_DDL)
    now = time.time() if heartbeat is None else heartbeat
    con.execute(
        "INSERT OR REPLACE INTO liteshift_lock VALUES (1, 'dead', ?, ?, ?, ?)",
        (socket.gethostname(), pid, now, now),
    )
    con.close()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_of_a_dead_process_is_cleared(new_db):
    db = new_db(200)
    pid = _dead_pid()
    _plant(db, pid)
    dead = lock.clear_stale(db)
    assert dead is not None and dead.pid == pid
    assert lock_row(db) is None


def test_lock_of_a_live_process_is_kept(new_db):
    db = new_db(200)
    _plant(db, os.getpid())
    assert lock.clear_stale(db) is None
    assert lock_row(db) is not None


def test_lock_with_an_old_heartbeat_is_taken_over(new_db):
    db = new_db(200)
    _plant(db, os.getpid(), heartbeat=time.time() - 3600)  # live pid, but silent for an hour
    me = lock.acquire(db, stale_after_s=300)
    assert lock_row(db)[0] == me.token


def test_clearing_needs_no_write_lock_when_there_is_nothing_to_clear(new_db):
    db = new_db(200)
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("BEGIN IMMEDIATE")  # an application's long write transaction
    try:
        start = time.perf_counter()
        assert lock.clear_stale(db, busy_timeout_ms=2000) is None
        assert time.perf_counter() - start < 0.5
    finally:
        app.execute("ROLLBACK")
        app.close()
