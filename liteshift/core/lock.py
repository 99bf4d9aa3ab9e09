"""A migration lock inside the database itself, so a runner outside Prefect is refused too.

One row in liteshift_lock names the owner (token, host, pid) and a heartbeat. A lock whose
process is gone (same host) or whose heartbeat is older than stale_after_s is stale and is
taken over; any other held lock refuses the run before anything is written.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from liteshift.core import faults
from liteshift.core.db import begin_immediate, connection
from liteshift.core.errors import BadInput, ErrorOutcome

LOCK_TABLE = "liteshift_lock"
STALE_AFTER_S = 300.0  # a heartbeat older than this marks the holder dead, whatever its host
LOCK_DDL = f"""CREATE TABLE IF NOT EXISTS {LOCK_TABLE} (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    acquired_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
)"""


class LockHeld(BadInput):
    """Another live runner holds this database's migration lock."""

    outcome: ClassVar[ErrorOutcome] = "deferred"


@dataclass(frozen=True)
class Holder:
    """The row of liteshift_lock."""

    token: str
    host: str
    pid: int
    acquired_at: float
    heartbeat_at: float

    def process_gone(self) -> bool:
        """True when the holder ran on this host and its process no longer exists."""
        return self.host == socket.gethostname() and not pid_alive(self.pid)

    def is_stale(self, now: float, stale_after_s: float) -> bool:
        """Its process is gone, or its heartbeat is older than stale_after_s."""
        return now - self.heartbeat_at > stale_after_s or self.process_gone()


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with that PID exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(con: sqlite3.Connection) -> Holder | None:
    """The current holder, or None when the database is not locked."""
    exists = con.execute("SELECT 1 FROM sqlite_schema WHERE name = ?", (LOCK_TABLE,)).fetchone()
    if not exists:
        return None
    row = con.execute(
        f"SELECT token, host, pid, acquired_at, heartbeat_at FROM {LOCK_TABLE} WHERE id = 1"
    ).fetchone()
    return Holder(*row) if row else None


def acquire(database: Path, busy_timeout_ms: int = 5000, stale_after_s: float = STALE_AFTER_S) -> Holder:
    """Take the lock (recovering a stale one) or raise LockHeld naming the holder."""
    me = Holder(uuid.uuid4().hex, socket.gethostname(), os.getpid(), time.time(), time.time())
    with connection(database, busy_timeout_ms) as con:
        begin_immediate(con, database, busy_timeout_ms)
        con.execute(LOCK_DDL)
        held = read_holder(con)
        if held and not held.is_stale(time.time(), stale_after_s):
            con.execute("ROLLBACK")
            age = time.time() - held.heartbeat_at
            raise LockHeld(
                f"Database {database} is being migrated by another run",
                f"host {held.host} pid {held.pid} holds the liteshift lock (heartbeat {age:.0f} s ago)",
                "wait for that run to finish; a lock whose process died is recovered automatically",
            )
        con.execute(
            f"INSERT OR REPLACE INTO {LOCK_TABLE} VALUES (1, ?, ?, ?, ?, ?)",
            (me.token, me.host, me.pid, me.acquired_at, me.heartbeat_at),
        )
        con.execute("COMMIT")
    return me


def clear_stale(database: Path, busy_timeout_ms: int = 5000, stale_after_s: float = 300.0) -> Holder | None:
    """Remove the lock row of a run that died holding it; return that run, or None."""
    with connection(database, busy_timeout_ms) as con:
        dead = read_holder(con)  # no write lock unless there is something to clear
        if dead is None or not dead.is_stale(time.time(), stale_after_s):
            return None
        begin_immediate(con, database, busy_timeout_ms)
        con.execute(f"DELETE FROM {LOCK_TABLE} WHERE id = 1 AND token = ?", (dead.token,))
        con.execute("COMMIT")
    return dead


def clear_dead_run(database: Path, busy_timeout_ms: int = 5000) -> list[str]:
    """Clear the lock row a run killed after its commit left; the warning to show, if any."""
    dead = clear_stale(database, busy_timeout_ms)
    if dead is None:
        return []
    return [
        f"a previous run (host {dead.host} pid {dead.pid}) died while holding the lock; its lock "
        "was cleared. Its migrations are applied, but its verification and report may be missing: "
        "check the indexes and the last report"
    ]


def release(database: Path, token: str, busy_timeout_ms: int = 5000) -> None:
    """Remove the lock row if it is still ours."""
    with connection(database, busy_timeout_ms) as con:
        con.execute(f"DELETE FROM {LOCK_TABLE} WHERE id = 1 AND token = ?", (token,))


def beat(database: Path, token: str, busy_timeout_ms: int = 1000) -> bool:
    """Refresh our heartbeat; False when the lock is no longer ours or the database is busy."""
    try:
        with connection(database, busy_timeout_ms) as con:
            cur = con.execute(
                f"UPDATE {LOCK_TABLE} SET heartbeat_at = ? WHERE id = 1 AND token = ?",
                (time.time(), token),
            )
            return cur.rowcount == 1
    except sqlite3.OperationalError:
        return False  # busy (our own migration holds the write lock): try again next beat


@contextmanager
def held(
    database: Path,
    busy_timeout_ms: int = 5000,
    stale_after_s: float = STALE_AFTER_S,
    interval_s: float = 15.0,
) -> Iterator[Holder]:
    """Hold the lock for a block, with a heartbeat thread, and always release it."""
    me = acquire(database, busy_timeout_ms, stale_after_s)
    faults.point("lock-acquired")
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(interval_s):
            beat(database, me.token)

    thread = threading.Thread(target=heartbeat, name="liteshift-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield me
    finally:
        stop.set()
        thread.join()
        faults.point("lock-before-release")
        release(database, me.token, busy_timeout_ms)
