"""Step 3, migrate: every pending up and its tracking row in one BEGIN IMMEDIATE transaction."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from liteshift import faults
from liteshift import migrations as mig
from liteshift.config import RunConfig
from liteshift.db import TRACKING_TABLE, begin_immediate, connection, fingerprint
from liteshift.errors import CheckFailed
from tasks.common import step_task


@dataclass
class Applied:
    """What the migrate step committed and how long it held the write lock."""

    applied: list[str]
    batch: str
    lock_seconds: float
    lock_wait_seconds: float
    rows_changed: int
    statement_seconds: dict[str, float] = field(default_factory=dict)
    checkpoint_seconds: float = 0.0


def migrate_database(
    cfg: RunConfig,
    backup_path: str | None = None,
    backup_fingerprint: dict[str, list[int]] | None = None,
    flow_run_id: str | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> Applied:
    """Apply the pending migrations atomically; nothing but the migration runs inside the lock."""
    migrations = mig.load_migrations(cfg.migrations_dir)
    batch = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    with connection(cfg.database, cfg.busy_timeout_ms) as con:
        # COMMIT would otherwise also copy the new pages from the -wal into the file: that runs
        # after the write lock is released, so it is done and timed apart, not counted as lock.
        con.execute("PRAGMA wal_autocheckpoint = 0")
        waited = time.perf_counter()
        begin_immediate(con, cfg.database, cfg.busy_timeout_ms)
        locked_at = time.perf_counter()
        faults.point("migrate-locked")
        try:
            applied = mig.applied_migrations(con)
            mig.check_drift(migrations, applied)
            todo = mig.pending(migrations, applied)  # re-read under the lock: no double apply
            before = fingerprint(con) if todo and not all(m.down for m in todo) else None
            changes = con.total_changes
            con.execute(mig.TRACKING_DDL)
            timings = _apply(con, todo, batch, backup_path, flow_run_id, on_progress)
            rows_changed = con.total_changes - changes - len(todo)
            if before is not None:
                _record_fingerprints(con, todo, before, backup_fingerprint)
            faults.point("migrate-before-commit")
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        lock_seconds = time.perf_counter() - locked_at
        checkpoint_start = time.perf_counter()
        con.execute("PRAGMA wal_checkpoint(PASSIVE)")
        checkpoint_seconds = time.perf_counter() - checkpoint_start
    faults.point("migrate-after-commit")
    labels = [m.label for m in todo]
    return Applied(labels, batch, lock_seconds, locked_at - waited, rows_changed, timings, checkpoint_seconds)


def _apply(
    con: sqlite3.Connection,
    todo: list[mig.Migration],
    batch: str,
    backup_path: str | None,
    flow_run_id: str | None,
    on_progress: Callable[[float], None] | None,
) -> dict[str, float]:
    timings = {}
    total = max(1, sum(len(m.up) for m in todo))
    done = 0
    for m in todo:
        start = time.perf_counter()
        for stmt in m.up:
            try:
                con.execute(stmt)
            except sqlite3.Error as exc:
                raise CheckFailed(
                    f"Migration {m.path.name} failed",
                    mig.failure_detail(exc, stmt),
                    "nothing was applied (the transaction was rolled back); fix the data or "
                    "the migration and run again",
                ) from exc
            done += 1
            faults.point("migrate-between-statements")
            if on_progress:
                on_progress(done / total)
        seconds = time.perf_counter() - start
        con.execute(
            f"INSERT INTO {TRACKING_TABLE} (version, name, checksum, applied_at, duration_s, "
            "flow_run_id, batch, backup_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                m.version,
                m.name,
                m.checksum,
                datetime.now(UTC).isoformat(timespec="seconds"),
                seconds,
                flow_run_id,
                batch,
                backup_path,
            ),
        )
        timings[m.label] = seconds
    return timings


def _record_fingerprints(
    con: sqlite3.Connection,
    todo: list[mig.Migration],
    before: dict[str, list[int]],
    backup_fingerprint: dict[str, list[int]] | None,
) -> None:
    """For migrations without a down: remember whether a restore could ever be lossless."""
    backup_current = backup_fingerprint == before
    data = json.dumps({"backup_current": backup_current, "after": fingerprint(con)})
    versions = [m.version for m in todo]
    con.execute(
        f"UPDATE {TRACKING_TABLE} SET fingerprint = ? WHERE version IN ({', '.join('?' * len(versions))})",
        (data, *versions),
    )


migrate = step_task(migrate_database, "migrate")
