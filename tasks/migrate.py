"""Step 3, migrate: every pending up and its tracking row in one BEGIN IMMEDIATE transaction."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from liteshift import faults, tracking
from liteshift.config import RunConfig
from liteshift.db import begin_immediate, connection, fingerprint
from liteshift.errors import CheckFailed
from liteshift.migrations import Migration, load_migrations
from liteshift.rehearsal import INDEX_ONLY_RE
from liteshift.sql import failure_detail
from liteshift.tracking import TRACKING_TABLE, Fingerprint


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
    locked_at: float = 0.0  # time.perf_counter() when the write lock was taken


def apply_migrations(
    cfg: RunConfig,
    backup_path: str | None = None,
    backup_fingerprint: Fingerprint | None = None,
    flow_run_id: str | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> Applied:
    """Apply the pending migrations atomically; nothing but the migration runs inside the lock."""
    migrations = load_migrations(cfg.migrations_dir)
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
            applied = tracking.read_tracking(con)
            tracking.check_drift(migrations, applied)
            todo = tracking.pending(migrations, applied)  # re-read under the lock: no double apply
            index_only = all(INDEX_ONLY_RE.match(s) for m in todo for s in m.up)
            # A migration that writes rows needs the counts before and after to prove, later, that
            # a restore would lose nothing; an index-only one changes no row, so the backup's own
            # fingerprint is that proof, at no cost inside the lock.
            before = fingerprint(con) if todo and backup_fingerprint and not index_only else None
            tracking.ensure_current(con)
            changes = con.total_changes
            timings = _apply(con, todo, batch, backup_path, flow_run_id, on_progress)
            rows_changed = con.total_changes - changes - len(todo)
            _record_restore_proof(con, todo, backup_fingerprint, before, index_only)
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
    return Applied(
        labels, batch, lock_seconds, locked_at - waited, rows_changed, timings, checkpoint_seconds, locked_at
    )


def _apply(
    con: sqlite3.Connection,
    todo: list[Migration],
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
                    failure_detail(exc, stmt),
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


def _record_restore_proof(
    con: sqlite3.Connection,
    todo: list[Migration],
    backup_fingerprint: Fingerprint | None,
    before: Fingerprint | None,
    index_only: bool,
) -> None:
    """Record the fingerprint the database must keep for a restore of the backup to lose nothing.

    None when no such proof exists: no backup, or a write landed between the backup and the lock.
    """
    if not todo:
        return
    if backup_fingerprint is None:
        proof = None
    elif index_only:
        proof = backup_fingerprint
    else:
        proof = fingerprint(con) if before == backup_fingerprint else None
    versions = [m.version for m in todo]
    con.execute(
        f"UPDATE {TRACKING_TABLE} SET fingerprint = ? WHERE version IN ({', '.join('?' * len(versions))})",
        (json.dumps({"restore_if": proof}), *versions),
    )
