"""The lock row inside SQLite: a live holder refuses, a dead or silent one is recovered."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import snapshot

from liteshift.core import lock
from liteshift.core.db import connection


def _plant(db: Path, host: str, pid: int, heartbeat_at: float) -> None:
    """Write a holder row as another runner would have left it."""
    with connection(db) as con:
        con.execute(lock.LOCK_DDL)
        con.execute(
            f"INSERT OR REPLACE INTO {lock.LOCK_TABLE} VALUES (1, 'their-token', ?, ?, ?, ?)",
            (host, pid, heartbeat_at - 10, heartbeat_at),
        )


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _holder(db: Path) -> lock.Holder | None:
    with connection(db, readonly=True) as con:
        return lock.read_holder(con)


def test_held_lock_refuses_with_exact_message_and_changes_nothing(make_db):
    db = make_db()
    _plant(db, socket.gethostname(), os.getpid(), time.time())
    before = snapshot(db)
    with pytest.raises(lock.LockHeld) as err:
        lock.acquire(db)
    assert str(err.value) == (
        f"Database {db} is being migrated by another run: host {socket.gethostname()} pid {os.getpid()} "
        "holds the liteshift lock (heartbeat 0 s ago). Try: wait for that run to finish; a lock whose "
        "process died is recovered automatically"
    )
    assert err.value.exit_code == 2
    assert snapshot(db) == before


def test_held_lock_on_another_host_with_fresh_heartbeat_refuses(make_db):
    db = make_db()
    _plant(db, "other-host", 1, time.time() - 5)
    with pytest.raises(lock.LockHeld, match="host other-host pid 1 holds the liteshift lock"):
        lock.acquire(db, stale_after_s=300)


def test_stale_lock_of_a_dead_pid_is_recovered(make_db):
    db = make_db()
    dead = _dead_pid()
    _plant(db, socket.gethostname(), dead, time.time())
    me = lock.acquire(db)
    holder = _holder(db)
    assert holder is not None
    assert (holder.token, holder.pid) == (me.token, os.getpid())
    lock.release(db, me.token)
    assert _holder(db) is None


def test_stale_lock_by_heartbeat_age_is_recovered(make_db):
    db = make_db()
    _plant(db, "other-host", 1, time.time() - 301)  # pid unknowable on another host: age decides
    me = lock.acquire(db, stale_after_s=300)
    holder = _holder(db)
    assert holder is not None and holder.token == me.token and holder.host == socket.gethostname()


def test_held_releases_even_when_the_block_fails(make_db):
    db = make_db()
    with pytest.raises(RuntimeError), lock.held(db, interval_s=0.05):
        assert _holder(db) is not None
        time.sleep(0.15)  # let the heartbeat thread beat at least once
        raise RuntimeError("step failed")
    assert _holder(db) is None


def test_heartbeat_moves_forward_while_held(make_db):
    db = make_db()
    with lock.held(db, interval_s=0.05) as me:
        first = me.heartbeat_at
        time.sleep(0.3)
        holder = _holder(db)
        assert holder is not None and holder.heartbeat_at > first
