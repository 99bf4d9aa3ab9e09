"""The rollback: run the downs in one transaction, or restore the backup only when that loses nothing."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from liteshift import faults, rebuild
from liteshift.db import backup_pages, begin_immediate, connection, fingerprint, pragma_check
from liteshift.errors import CheckFailed, MigrationError, RollbackRefused
from liteshift.migrations import Migration, Rebuild, load_migrations
from liteshift.sql import failure_detail
from liteshift.tasks.backup import PARTIAL_SUFFIX
from liteshift.tracking import TRACKING_TABLE, TrackingRow, read_tracking


class DownFailed(RollbackRefused):
    """A down statement failed; its transaction was rolled back, so nothing was undone."""


@dataclass
class Rollback:
    """What the rollback did and what it verified afterwards."""

    action: Literal["nothing", "down", "restore", "refused"]
    undone: list[str]
    message: str
    verified: list[str] = field(default_factory=list)


def rollback_database(
    database: Path,
    migrations_dir: Path,
    versions: list[str] | None = None,
    backup_path: str | None = None,
    busy_timeout_ms: int = 5000,
) -> Rollback:
    """Undo the given versions (default: the last applied batch), then verify the result."""
    migrations = {m.version: m for m in load_migrations(migrations_dir)}
    with connection(database, busy_timeout_ms) as con, rebuild.foreign_keys_off(con):
        if not _targets(con, versions):  # a read: no write lock needed to know there is nothing
            return Rollback("nothing", [], "the migration never committed: nothing to undo")
        begin_immediate(con, database, busy_timeout_ms)
        rows = _targets(con, versions)
        if not rows:
            con.execute("ROLLBACK")
            return Rollback("nothing", [], "the migration never committed: nothing to undo")
        missing = [r.version for r in rows if r.version not in migrations]
        if missing:
            con.execute("ROLLBACK")
            raise RollbackRefused(
                f"Migration file(s) for version {', '.join(missing)} not found",
                f"looked in {migrations_dir}",
                "pass --migrations pointing at the directory they came from",
            )
        todo = [migrations[r.version] for r in rows]
        faults.point("rollback-start")
        if all(m.has_down for m in todo):
            try:
                _run_downs(con, todo, {r.version: r for r in rows})
            except DownFailed as exc:
                result = _restore_after(exc, database, rows, backup_path, busy_timeout_ms)
            else:
                faults.point("rollback-downs-committed")
                result = Rollback(
                    "down", [m.label for m in todo], f"ran the down of {', '.join(m.label for m in todo)}"
                )
        else:
            con.execute("ROLLBACK")
            result = _restore(database, rows, backup_path, busy_timeout_ms)
    result.verified = _verify(database, todo, busy_timeout_ms)
    faults.point("rollback-verified")
    return result


def _targets(con: sqlite3.Connection, versions: list[str] | None) -> list[TrackingRow]:
    applied = read_tracking(con)
    if versions is None:
        if not applied:
            return []
        last = max(a.batch for a in applied.values())
        return sorted((a for a in applied.values() if a.batch == last), key=lambda a: a.version, reverse=True)
    return sorted((applied[v] for v in versions if v in applied), key=lambda a: a.version, reverse=True)


def _run_downs(con: sqlite3.Connection, todo: list[Migration], rows: dict[str, TrackingRow]) -> None:
    """Every down, newest first, and the tracking rows' removal, in the one open transaction.

    A migration's down is its down section, then its rebuilds undone newest first: each table
    rebuilt back to the definition saved when the migration ran (foreign_keys is off).
    """
    try:
        for m in todo:
            for stmt in m.down:
                try:
                    con.execute(stmt)
                except sqlite3.Error as exc:
                    raise DownFailed(
                        f"The down of {m.path.name} failed",
                        failure_detail(exc, stmt),
                        "the database is left as the migration made it (nothing was undone); "
                        "fix the down section and run 'liteshift rollback' again",
                    ) from exc
            for table, sql in reversed(rows[m.version].rebuilt()):
                _rebuild_back(con, m, table, sql)
            con.execute(f"DELETE FROM {TRACKING_TABLE} WHERE version = ?", (m.version,))
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


def _rebuild_back(con: sqlite3.Connection, m: Migration, table: str, sql: str) -> None:
    """Rebuild a table back to its saved definition; refuse when that cannot give back every value."""
    back = Rebuild(table, sql)
    try:
        current = rebuild.read_table(con, table)
        lost = [
            c
            for c in rebuild.plan_copy(rebuild.read_table(con, table), back).target.stored
            if c.lower() not in {x.lower() for x in current.columns}
        ]
        if lost:
            raise DownFailed(
                f"The rebuild of {table} in {m.path.name} cannot be undone by a rebuild",
                f"it dropped column(s) {', '.join(lost)}, whose values only the backup still has",
                "restore the backup (liteshift does when nothing was written since), or keep the "
                "database as it is",
            )
        rebuild.rebuild_blocking(con, back)
    except MigrationError as exc:
        if isinstance(exc, DownFailed):
            raise
        raise DownFailed(
            f"The down of {m.path.name} failed",
            f"rebuilding {table} back to its saved definition: {exc.why or exc.what}",
            "the database is left as the migration made it (nothing was undone)",
        ) from exc


def _restore_after(
    failed: DownFailed, database: Path, rows: list[TrackingRow], backup_path: str | None, busy_timeout_ms: int
) -> Rollback:
    """A down failed (and was rolled back): restore the backup instead, under the same proof."""
    try:
        restored = _restore(database, rows, backup_path, busy_timeout_ms)
    except RollbackRefused as exc:
        raise RollbackRefused(
            f"{failed.what}, and the backup cannot be restored instead",
            f"{failed.why}; {exc.why}",
            failed.hint,
        ) from exc
    restored.message = f"{failed.what} ({failed.why}); {restored.message} instead"
    return restored


def _restore(
    database: Path, rows: list[TrackingRow], backup_path: str | None, busy_timeout_ms: int
) -> Rollback:
    """Restore the backup with the backup API, only when no write was committed after it."""
    backup = backup_path or rows[0].backup_path
    if not backup or not Path(backup).exists():
        raise RollbackRefused(
            f"Cannot undo {', '.join(r.version for r in rows)}: no down section and no backup",
            f"backup {backup or '(none recorded)'} is not there",
            "write a down section for the migration, or restore a backup by hand",
        )
    _check_backup(backup, busy_timeout_ms)
    expected = rows[0].restore_if()
    with connection(database, busy_timeout_ms) as con:
        now = fingerprint(con)
        if expected is None or now != expected:
            raise RollbackRefused(
                "Refusing to restore the backup over newer writes",
                f"rows were written after the backup {backup} was taken; a restore would discard them",
                f"keep the database as it is, or inspect {backup} and move the rows by hand",
            )
        with connection(backup, busy_timeout_ms) as src:
            faults.point("rollback-before-restore")
            backup_pages(src, con, during=lambda: faults.point("rollback-restoring"))
    return Rollback("restore", [r.version for r in rows], f"restored the backup {backup}")


def _check_backup(backup: str, busy_timeout_ms: int) -> None:
    """Never restore an unfinished (.partial) or damaged backup over the live database."""
    if backup.endswith(PARTIAL_SUFFIX):
        raise RollbackRefused(
            f"Refusing to restore {backup}",
            "a .partial file is a backup that was never finished and verified",
            "pass a backup without the .partial suffix, or keep the database as it is",
        )
    # Read-write like the restore itself: a WAL-header copy opened read-only leaves -wal/-shm behind.
    with connection(backup, busy_timeout_ms) as con:
        try:
            problems = pragma_check(con, "quick_check")
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
    if problems:
        raise RollbackRefused(
            f"Refusing to restore {backup}",
            f"the backup fails quick_check: {problems[0]}",
            "the database was not changed; restore an older good backup by hand",
        )


def _verify(database: Path, todo: list[Migration], busy_timeout_ms: int) -> list[str]:
    """After the rollback: integrity, created indexes gone, tracking rows gone."""
    with connection(database, busy_timeout_ms) as con:
        problems = pragma_check(con, "quick_check")
        if problems:
            raise CheckFailed(
                "quick_check failed after the rollback",
                problems[0],
                "stop writes to the database and restore the backup by hand",
            )
        left = [
            n
            for m in todo
            for n in m.created_index_names()
            if con.execute("SELECT 1 FROM sqlite_schema WHERE type='index' AND name=?", (n,)).fetchone()
        ]
        tracked = set(read_tracking(con)) & {m.version for m in todo}
    if left or tracked:
        raise CheckFailed(
            "The rollback did not undo everything",
            f"indexes still present: {left}; tracking rows still present: {sorted(tracked)}",
            "inspect the database before running again",
        )
    return ["quick_check: ok", "created indexes gone", "tracking rows gone"]
