"""Step 1, pre-flight validation: everything is checked before anything is written."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from liteshift.core import faults, tracking
from liteshift.core.config import RunConfig
from liteshift.core.db import (
    CORRUPT_HINT,
    begin_immediate,
    check_is_sqlite_file,
    connection,
    foreign_key_problems,
    is_locked_error,
    journal_mode,
    page_bytes,
    pragma_check,
    table_bytes,
    table_exists,
)
from liteshift.core.errors import BadInput
from liteshift.core.indexes import IndexDef, index_definition
from liteshift.core.migrations import Migration, Query, dropped_index_names, load_migrations
from liteshift.core.tables import read_table
from liteshift.core.tracking import TrackingRow
from liteshift.migrate.rehearsal import Rehearsal, rehearse
from liteshift.rebuild.constraints import find_violations
from liteshift.rebuild.prebuild import duplicate_keys, plan_online
from liteshift.rebuild.schema import plan_copy


@dataclass
class Validation:
    """What pre-flight found: the plan for the rest of the run."""

    database: str
    size_bytes: int
    journal_mode: str
    applied: list[str]
    pending: list[str]
    touched_tables: list[str]
    indexes: dict[str, IndexDef]
    index_only: bool
    queries: list[Query]  # what the pending migrations declare they serve, in order
    free_bytes: int
    required_bytes: int
    check: str
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    rebuilds: list[str] = field(default_factory=list)  # tables the pending migrations rebuild
    index_builds: list[str] = field(default_factory=list)  # tables copied online for new indexes
    undo: dict[str, str] = field(default_factory=dict)  # label -> down-section, derived or backup

    may_write: list[str] = field(default_factory=list)  # existing tables the ups write or redefine

    @property
    def watch_tables(self) -> list[str]:
        """The tables the write ledger must watch from the backup on: those the pending migrations
        may write or redefine, when one of them can only be undone from the backup."""
        return self.may_write if "backup" in self.undo.values() else []


def validate_database(cfg: RunConfig) -> Validation:
    """Check the file, the migrations, the schema, free space and the write lock; write nothing."""
    start = time.perf_counter()
    faults.point("validate-start")
    db = cfg.database
    check_is_sqlite_file(db)
    _check_writable(db)
    migrations = load_migrations(cfg.migrations_dir)
    with connection(db, cfg.busy_timeout_ms) as con:
        applied = _read_applied(con, db)
        tracking.check_drift(migrations, applied)
        todo = tracking.pending(migrations, applied)
        check = _integrity(con, db, cfg.integrity)
        _foreign_keys(con, db)
        mode = journal_mode(con)
        size = page_bytes(con)
        rehearsal = rehearse(con, todo) if todo else Rehearsal({}, (), True)
        existing: list[str] = []
        rebuild_bytes = 0
        index_builds: list[str] = []
        if todo:
            existing = _same_name_indexes(con, rehearsal, dropped_index_names(todo))
            _declared_queries_compile(con, todo)
            rebuild_bytes = _rebuild_checks(con, todo, cfg.rebuild_mode)
            index_builds, index_bytes = _index_build_checks(con, todo, cfg)
            rebuild_bytes += index_bytes
            begin_immediate(con, db, cfg.busy_timeout_ms)  # can we get the write lock at all?
            con.execute("ROLLBACK")
    free, required = _disk_space(cfg, size, rebuild_bytes) if todo else (0, 0)
    faults.point("validate-end")
    warnings = (
        []
        if mode == "wal" or not todo
        else [f"journal mode is {mode}, not WAL: readers are blocked while the indexes are written"]
    )
    warnings += [
        f"index {name} already exists as declared: the migration keeps it, and its down would drop it"
        for name in existing
    ]
    return Validation(
        database=str(db),
        size_bytes=size,
        journal_mode=mode,
        applied=sorted(applied),
        pending=[m.label for m in todo],
        queries=[q for m in todo for q in m.queries],
        rebuilds=[r.table for m in todo for r in m.rebuilds],
        index_builds=index_builds,
        touched_tables=list(rehearsal.touched_tables),
        indexes=rehearsal.indexes | rehearsal.carried,
        index_only=rehearsal.index_only,
        free_bytes=free,
        required_bytes=required,
        check=check,
        seconds=time.perf_counter() - start,
        warnings=warnings,
        undo=rehearsal.undo,
        may_write=list(rehearsal.may_write),
    )


def _check_writable(db: Path) -> None:
    if not os.access(db, os.W_OK):
        raise BadInput(
            f"Database {db} is read-only",
            "liteshift needs to write the file to add the migration",
            "run as the file's owner or fix its permissions (chmod u+w)",
        )
    if not os.access(db.parent, os.W_OK):
        raise BadInput(
            f"Directory {db.parent} is read-only",
            "SQLite writes its -wal / -journal files beside the database",
            "make the directory writable for the user running liteshift",
        )


def _read_applied(con: sqlite3.Connection, db: Path) -> dict[str, TrackingRow]:
    try:
        return tracking.read_tracking(con)
    except sqlite3.DatabaseError as exc:
        if is_locked_error(exc):
            raise
        raise BadInput(f"Database {db} is corrupt", str(exc), CORRUPT_HINT) from exc


def _integrity(con: sqlite3.Connection, db: Path, level: str) -> str:
    pragma = "integrity_check" if level == "full" else "quick_check"
    try:
        problems = pragma_check(con, pragma)
    except sqlite3.DatabaseError as exc:
        if is_locked_error(exc):
            raise
        raise BadInput(f"Database {db} is corrupt", f"{pragma} could not run: {exc}", CORRUPT_HINT) from exc
    if problems:
        raise BadInput(
            f"Database {db} is corrupt",
            f"{pragma} found {len(problems)} problem(s), first: {problems[0]}",
            CORRUPT_HINT,
        )
    return f"{pragma}: ok"


def _foreign_keys(con: sqlite3.Connection, db: Path) -> None:
    problems = foreign_key_problems(con)
    if problems:
        table, rowid, parent, _ = problems[0]
        raise BadInput(
            f"Database {db} has {len(problems)} foreign key violation(s)",
            f"first: {table} rowid {rowid} points to a missing {parent} row",
            "fix the rows PRAGMA foreign_key_check lists, then run again",
        )


def _same_name_indexes(con: sqlite3.Connection, rehearsal: Rehearsal, replaced: set[str]) -> list[str]:
    """Refuse an older index of the same name (IF NOT EXISTS would keep it); list identical ones.

    An index the migrations drop before creating it again is theirs to replace.
    """
    identical = []
    for name, declared in rehearsal.indexes.items():
        if name in replaced:
            continue
        live = index_definition(con, name)
        if live is not None and live != declared:
            raise BadInput(
                f"Index {name} already exists with another definition",
                f"the database has {live.describe()}, the migration declares {declared.describe()}",
                f"drop or rename the old index {name} first; CREATE INDEX IF NOT EXISTS would keep it",
            )
        if live is not None:
            identical.append(name)
    return identical


def _declared_queries_compile(con: sqlite3.Connection, todo: list[Migration]) -> None:
    for m in todo:
        for q in m.queries:
            try:
                con.execute("EXPLAIN QUERY PLAN " + q.sql.rstrip().rstrip(";"))
            except sqlite3.Error as exc:
                raise BadInput(
                    f"Query {q.name} in {m.path.with_suffix('.toml').name} is invalid",
                    str(exc),
                    "fix the query's sql in the sidecar file",
                ) from exc


def _rebuild_checks(con: sqlite3.Connection, todo: list[Migration], mode: str) -> int:
    """Refuse rows that break a rebuild's new constraints; return the bytes the rebuilds copy."""
    copied = 0
    for m in todo:
        for r in m.rebuilds:
            if not table_exists(con, r.table):
                continue  # created by an earlier statement of the same migration: no rows yet
            if mode == "online" and plan_copy(read_table(con, r.table), r).shadow_key is None:
                raise BadInput(
                    f"{m.path.name}: the rebuild of {r.table} cannot run online",
                    "the new definition does not keep each row's key (rowid or primary key), so the "
                    "rows the application changes during the copy could not be matched",
                    "run with --rebuild-mode blocking (or auto); nothing was written",
                )
            found = find_violations(con, r.table, r.create_sql, r.expressions)
            if found:
                raise BadInput(
                    f"{m.path.name}: rows of {r.table} break the new definition",
                    "; ".join(v.message() for v in found),
                    "fix those rows, or give the column an expression under '-- migrate:columns', "
                    "then run again; nothing was written",
                )
            copied += table_bytes(con, r.table)
    return copied


def _index_build_checks(
    con: sqlite3.Connection, todo: list[Migration], cfg: RunConfig
) -> tuple[list[str], int]:
    """The tables copied online for their new indexes, and their bytes; a UNIQUE one over
    duplicate keys is refused here, naming them, before anything is written."""
    builds = [s for s in plan_online(con, todo, cfg.rebuild_mode, cfg.index_mode).tables if s.at_statement]
    for shadowed in builds:  # (on a rebuild's shadow, the copy finds them, in the new columns)
        for name, sql in shadowed.prebuilt:
            found = duplicate_keys(con, shadowed.spec.table, sql)
            if found:
                raise BadInput(
                    f"The unique index {name} cannot be built on {shadowed.spec.table}",
                    found,
                    "remove the duplicates (or drop UNIQUE from the index), then run again; "
                    "nothing was written",
                )
    return [s.spec.table for s in builds], sum(table_bytes(con, s.spec.table) for s in builds)


def _disk_space(cfg: RunConfig, size: int, rebuild_bytes: int = 0) -> tuple[int, int]:
    """Free bytes where the backup goes and the bytes this run needs.

    disk_factor x the size for the backup and growth, plus twice each rebuilt table with its
    indexes: the new copy in the file and the same pages passing through the -wal.
    """
    backup_dir = cfg.backup_directory
    if not backup_dir.is_dir():
        raise BadInput(
            f"Backup directory {backup_dir} does not exist",
            "the backup is written there before anything changes",
            "create it or pass another --backup-dir",
        )
    if not os.access(backup_dir, os.W_OK):
        raise BadInput(
            f"Backup directory {backup_dir} is not writable",
            "the backup is written there before anything changes",
            "fix its permissions or pass another --backup-dir",
        )
    required = int(size * cfg.disk_factor) + 2 * rebuild_bytes
    backup_free = shutil.disk_usage(backup_dir).free
    db_free = shutil.disk_usage(cfg.database.parent).free
    same_fs = os.stat(backup_dir).st_dev == os.stat(cfg.database.parent).st_dev
    needs = [(backup_dir, backup_free, required if same_fs else size)]
    if not same_fs:
        needs.append((cfg.database.parent, db_free, required - size))
    for where, free, need in needs:
        if free < need:
            raise BadInput(
                f"Not enough disk space in {where}",
                f"{free / 1e6:.1f} MB free, {need / 1e6:.1f} MB needed "
                f"({cfg.disk_factor:g} x the {size / 1e6:.1f} MB database for backup and growth"
                + (f", 2 x {rebuild_bytes / 1e6:.1f} MB for the rebuilt tables)" if rebuild_bytes else ")"),
                "free some space, pass another --backup-dir, or lower --disk-factor",
            )
    return min(backup_free, db_free), required
