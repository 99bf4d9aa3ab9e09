"""Step 3, migrate: every pending up and its tracking row in one BEGIN IMMEDIATE transaction.

A table rebuild chosen to run online is copied first, in short transactions of its own
(`copy_rebuilds`, shown as its own step); the one transaction then only drains what the
application changed meanwhile and swaps the tables (liteshift.rebuild.online).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from liteshift.core import faults, tracking
from liteshift.core.config import RunConfig
from liteshift.core.db import begin_immediate, connection, is_locked_error
from liteshift.core.errors import CheckFailed, MigrationError
from liteshift.core.migrations import Migration, Rebuild, load_migrations
from liteshift.core.progress import Progress, Tick, tell
from liteshift.core.sql import failure_detail
from liteshift.core.throttle import Throttle
from liteshift.core.tracking import TRACKING_TABLE
from liteshift.migrate import inverse, ledger, restore
from liteshift.rebuild import blocking, foreign_keys, online, prebuild, schema


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
    rebuilds: list[schema.RebuildStats] = field(default_factory=list)
    old_rows_freed: int = 0


def _plan(con: sqlite3.Connection, cfg: RunConfig, todo: list[Migration]) -> prebuild.OnlinePlan:
    """The batch's online work; a revert window kept from an earlier run ends first (its old copy
    would stand in the way of a new shadow of the same table)."""
    plan = prebuild.plan_online(con, todo, cfg.rebuild_mode, cfg.index_mode)
    if any(m.rebuilds for m in todo) or plan.tables:
        online.end_revert_windows(con, str(cfg.database), cfg.busy_timeout_ms, every=True)
    return plan


def _throttle(cfg: RunConfig, rows: int = Throttle.rows) -> Throttle:
    return Throttle(wal_limit_mb=cfg.wal_limit_mb, rows=rows)


def copy_rebuilds(cfg: RunConfig, on_progress: Progress | None = None) -> list[schema.RebuildStats]:
    """Fill the shadow tables of the online rebuilds, in short throttled transactions.

    Safe to repeat: a copy killed half way resumes where it stopped. Writes no user row.
    """
    todo = tracking.pending(load_migrations(cfg.migrations_dir), _applied(cfg))
    stats = []
    with connection(cfg.database, cfg.busy_timeout_ms) as con, foreign_keys.foreign_keys_off(con):
        plan = _plan(con, cfg, todo)
        keep = frozenset(f"{s.version}:{schema.names(s.spec.table).id}" for s in plan.tables)
        online.finish_leftovers(str(cfg.database), cfg.busy_timeout_ms, keep)
        with _abandon_on_failure(con, cfg, [s.spec for s in plan.tables]):
            for s in plan.tables:
                state = online.start_online(
                    con, s.spec, s.version, str(cfg.database), cfg.busy_timeout_ms, tuple(s.prebuilt)
                )
                stats.append(
                    online.copy_online(
                        con, state, str(cfg.database), cfg.busy_timeout_ms, _throttle(cfg), on_progress, False
                    )
                )
    return stats


@contextmanager
def _abandon_on_failure(con: sqlite3.Connection, cfg: RunConfig, specs: list[Rebuild]) -> Iterator[None]:
    """A check that fails (rows that break the new definition, a changed schema) removes the
    online rebuilds' shadow copies and capture triggers: they would otherwise tax every write of
    the application until a next run. A crash or a locked database keeps them, to resume."""
    try:
        yield
    except MigrationError as exc:
        if not is_locked_error(exc):
            for spec in specs:
                online.abandon_online(con, spec.table, str(cfg.database), cfg.busy_timeout_ms)
        raise


def _applied(cfg: RunConfig) -> dict[str, tracking.TrackingRow]:
    with connection(cfg.database, cfg.busy_timeout_ms) as con:
        return tracking.read_tracking(con)


def apply_migrations(
    cfg: RunConfig,
    backup_path: str | None = None,
    flow_run_id: str | None = None,
    on_progress: Progress | None = None,
) -> Applied:
    """Apply the pending migrations atomically; nothing but the migration runs inside the lock."""
    migrations = load_migrations(cfg.migrations_dir)
    batch = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    with connection(cfg.database, cfg.busy_timeout_ms) as con, foreign_keys.foreign_keys_off(con):
        # Online rebuilds: the copy (done already when the flow ran copy_rebuilds) and the
        # reconcile down to a small backlog, outside the migration's transaction.
        shadows: dict[prebuild.Position, online.Online] = {}
        todo = tracking.pending(migrations, tracking.read_tracking(con))
        plan = _plan(con, cfg, todo)
        with _abandon_on_failure(con, cfg, [s.spec for s in plan.tables]):
            for s in plan.tables:
                state = online.start_online(
                    con, s.spec, s.version, str(cfg.database), cfg.busy_timeout_ms, tuple(s.prebuilt)
                )
                online.copy_online(
                    con, state, str(cfg.database), cfg.busy_timeout_ms, _throttle(cfg), on_progress
                )
                shadows[s.at] = state
            result = _commit(
                con, cfg, migrations, batch, backup_path, flow_run_id, on_progress, shadows, plan
            )
        con.execute("PRAGMA wal_autocheckpoint = 1000")
        checkpoint_start = time.perf_counter()
        con.execute("PRAGMA wal_checkpoint(PASSIVE)")
        result.checkpoint_seconds = time.perf_counter() - checkpoint_start
        faults.point("migrate-after-commit")
        result.old_rows_freed = online.drop_old_tables(
            con, str(cfg.database), cfg.busy_timeout_ms, _throttle(cfg, rows=Throttle.min_rows)
        )
    return result


def _commit(
    con: sqlite3.Connection,
    cfg: RunConfig,
    migrations: list[Migration],
    batch: str,
    backup_path: str | None,
    flow_run_id: str | None,
    on_progress: Progress | None,
    shadows: dict[prebuild.Position, online.Online],
    plan: prebuild.OnlinePlan,
) -> Applied:
    """The migration's one transaction: every pending up, rebuild and tracking row, then COMMIT."""
    # COMMIT would otherwise also copy the new pages from the -wal into the file: that runs
    # after the write lock is released, so it is done and timed apart, not counted as lock.
    con.execute("PRAGMA wal_autocheckpoint = 0")
    backup_writes = ledger.backup_counts(backup_path) if backup_path else None  # before the lock
    waited = time.perf_counter()
    begin_immediate(con, cfg.database, cfg.busy_timeout_ms)
    locked_at = time.perf_counter()
    faults.point("migrate-locked")
    try:
        applied = tracking.read_tracking(con)
        tracking.check_drift(migrations, applied)
        todo = tracking.pending(migrations, applied)  # re-read under the lock: no double apply
        tracking.ensure_current(con)
        before = restore.Before.read(con)
        # The ledger's triggers would count every row the migration writes, inside its lock:
        # set aside; the authorizer names the tables it writes instead, at no cost per row, and
        # those get one count each (an earlier proof over them must no longer hold).
        if todo:  # _record_undo puts the ledger back
            ledger.pause(con)
        changes = con.total_changes
        stats: list[schema.RebuildStats] = []
        recorders = {m.version: inverse.Recorder() for m in todo}
        retained: set[str] = set()
        machinery = [0]  # rows an index build's cut-over writes (reconciled keys, its state row)
        with restore.tables_written(con) as written:
            timings = _apply(
                con,
                todo,
                batch,
                backup_path,
                flow_run_id,
                on_progress,
                shadows,
                plan,
                stats,
                recorders,
                cfg.revert_window_h > 0,
                retained,
                machinery,
            )
        rows_changed = con.total_changes - changes - len(todo) - machinery[0]
        ledger.bump(con, written)
        if todo:
            until = time.time() + cfg.revert_window_h * 3600
            _record_undo(con, todo, recorders, backup_path, backup_writes, before, written, retained, until)
        faults.point("migrate-before-commit")
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    return Applied(
        [m.label for m in todo],
        batch,
        time.perf_counter() - locked_at,
        locked_at - waited,
        rows_changed,
        timings,
        locked_at=locked_at,
        rebuilds=stats,
    )


def _apply(
    con: sqlite3.Connection,
    todo: list[Migration],
    batch: str,
    backup_path: str | None,
    flow_run_id: str | None,
    on_progress: Progress | None,
    shadows: dict[prebuild.Position, online.Online],
    plan: prebuild.OnlinePlan,
    stats: list[schema.RebuildStats],
    recorders: dict[str, inverse.Recorder],
    retain: bool,
    retained: set[str],
    machinery: list[int],
) -> dict[str, float]:
    """Every pending up, statement by statement; online rebuilds cut over (keeping their old copy
    for a revert when `retain`, the versions that did so added to `retained`)."""
    timings = {}
    total = max(1, sum(len(m.steps) for m in todo))
    done = 0
    # A prebuilt index exists from its table's cut-over on, which may come before its statement:
    # the inverse of that statement is read now, from the schema the batch started from.
    early = {
        (m.version, i): inverse.inverse_of(con, s)
        for m in todo
        for i, s in enumerate(m.steps)
        if (m.version, i) in plan.skipped
    }
    for m in todo:
        start = time.perf_counter()
        for i, stmt in enumerate(m.steps):
            if (m.version, i) in early:
                recorders[m.version].add(stmt, early[(m.version, i)])
            else:
                recorders[m.version].before(con, stmt)  # its inverse, read before it runs
            state = shadows.get((m.version, i))
            if state is not None:  # an online rebuild, or the first prebuilt index of its table
                kept = retain and isinstance(stmt, Rebuild)
                back = recorders[m.version].rebuilds_back[-1] if kept else None
                before = con.total_changes
                stats.append(online.cut_over(con, state, back))
                if state.stats.index_build:  # liteshift's own rows, not the migration's
                    machinery[0] += con.total_changes - before
                for later in plan.deferred.get((m.version, i), []):  # ANALYZE of an index built just now
                    _statement(con, m, later)
                if stats[-1].retained:
                    retained.add(m.version)
            elif isinstance(stmt, Rebuild):
                stats.append(blocking.rebuild_blocking(con, stmt))
            done += 1
            if state is not None or isinstance(stmt, Rebuild) or (m.version, i) in plan.skipped:
                tell(on_progress, Tick("migrate", done, total, "statements"))
                continue  # a prebuilt index exists from its table's cut-over on
            _statement(con, m, stmt)
            faults.point("migrate-between-statements")
            tell(on_progress, Tick("migrate", done, total, "statements"))
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


def _statement(con: sqlite3.Connection, m: Migration, stmt: str) -> None:
    try:
        con.execute(stmt)
    except sqlite3.Error as exc:
        raise CheckFailed(
            f"Migration {m.path.name} failed",
            failure_detail(exc, stmt),
            "nothing was applied (the transaction was rolled back); fix the data or "
            "the migration and run again",
        ) from exc


def _record_undo(
    con: sqlite3.Connection,
    todo: list[Migration],
    recorders: dict[str, inverse.Recorder],
    backup_path: str | None,
    backup_writes: dict[str, int] | None,
    before: restore.Before,
    written: set[str],
    retained: set[str],
    revert_until: float,
) -> None:
    """Record how each migration is undone and, where only the backup can undo it, the proof a
    restore will check; leave the write ledger on exactly the tables some proof needs."""
    kinds = {m.version: inverse.undo_kind(m, recorders[m.version]) for m in todo}
    proof: dict[str, Any] | None = None
    why = "the run took no backup"
    if backup_path is not None:
        proof, why = restore.make_proof(con, backup_path, before, backup_writes, written)
    if "backup" not in kinds.values() and proof is not None and proof["tables"]:
        # Undone by its downs: a proof over rewritten tables would tax every write of the
        # application with the ledger's triggers for nothing. One over schema objects alone is
        # free, and lets a down that fails fall back to the backup.
        proof, why = None, "undone by its down; no restore proof kept"
    ledger.keep_only(con, restore.proof_tables(con) | set(proof["tables"] if proof else []))
    if proof is not None:
        restore.seal(con, proof)
    for m in todo:
        derived = recorders[m.version].derived
        record: dict[str, Any] = {
            "undo": kinds[m.version],
            "down": inverse.to_json(derived) if derived is not None else None,
            "rebuilds_back": [
                inverse.to_json([b])[0] if b else None for b in recorders[m.version].rebuilds_back
            ],
            "proof": proof,
            "no_proof": why,
        }
        if m.version in retained:  # its online rebuild keeps the old copy fed until then
            record["revert_until"] = revert_until
        con.execute(
            f"UPDATE {TRACKING_TABLE} SET fingerprint = ? WHERE version = ?", (json.dumps(record), m.version)
        )
