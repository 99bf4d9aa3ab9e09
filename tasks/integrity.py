"""Step 5, integrity: the touched tables and their indexes, foreign keys, and row counts."""

from __future__ import annotations

import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from liteshift.core import faults
from liteshift.core.config import RunConfig
from liteshift.core.db import connection, foreign_key_problems, pragma_check, row_counts, user_tables
from liteshift.core.errors import CheckFailed
from liteshift.core.sql import quote_ident


@dataclass
class Integrity:
    """What the post-migration checks saw."""

    checked_tables: list[str]
    foreign_key_violations: int
    counts: dict[str, int]
    rows_changed: int


def check_integrity(
    cfg: RunConfig, touched_tables: list[str], index_only: bool, rows_changed: int
) -> Integrity:
    """integrity_check of what changed, foreign_key_check, and counts for an index migration.

    The checks are independent reads, so they run side by side, each on its own connection
    (SQLite releases the GIL), largest table first: the step lasts about as long as the
    integrity_check of the largest table instead of the sum of all of them.
    """
    if index_only and rows_changed:
        raise CheckFailed(
            "An index-only migration changed rows",
            f"{rows_changed} row(s) inserted, updated or deleted inside it",
            "the migration will be rolled back; check its statements",
        )
    with connection(cfg.database, cfg.busy_timeout_ms) as con:
        existing = set(user_tables(con))
        tables = [t for t in touched_tables if t in existing] or sorted(existing)
        largest_first = sorted(tables, key=lambda t: _last_rowid(con, t), reverse=True)
    workers = max(1, min(len(tables) + 1, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="integrity") as pool:
        checks = {t: pool.submit(_check_table, cfg, t) for t in largest_first}
        fk = pool.submit(_foreign_keys, cfg)
        counts = {t: checks[t].result() for t in tables}  # re-raises the first failure
        fk.result()
    faults.point("integrity-done")
    return Integrity(tables, 0, counts, rows_changed)


def _last_rowid(con: sqlite3.Connection, table: str) -> int:
    """A cheap size estimate (one seek); 0 for a WITHOUT ROWID table."""
    try:
        return int(con.execute(f"SELECT max(rowid) FROM {quote_ident(table)}").fetchone()[0] or 0)
    except sqlite3.OperationalError:
        return 0


def _check_table(cfg: RunConfig, table: str) -> int:
    """integrity_check of one table and its indexes; its row count when it passes."""
    with connection(cfg.database, cfg.busy_timeout_ms, readonly=True) as con:
        problems = pragma_check(con, "integrity_check", table)
        if problems:
            raise CheckFailed(
                f"integrity_check of {table} failed after the migration",
                f"{len(problems)} problem(s), first: {problems[0]}",
                "the migration will be rolled back; keep the backup",
            )
        return row_counts(con, [table])[table]


def _foreign_keys(cfg: RunConfig) -> None:
    with connection(cfg.database, cfg.busy_timeout_ms, readonly=True) as con:
        fk = foreign_key_problems(con)
    if fk:
        raise CheckFailed(
            f"The migration left {len(fk)} foreign key violation(s)",
            f"first: {fk[0][0]} rowid {fk[0][1]} -> {fk[0][2]}",
            "the migration will be rolled back",
        )
