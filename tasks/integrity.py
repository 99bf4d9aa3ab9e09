"""Step 5, integrity: the touched tables and their indexes, foreign keys, and row counts."""

from __future__ import annotations

from dataclasses import dataclass

from liteshift import faults
from liteshift.config import RunConfig
from liteshift.db import connection, foreign_key_problems, pragma_check, row_counts, user_tables
from liteshift.errors import CheckFailed
from tasks.common import step_task


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
    """integrity_check of what changed, foreign_key_check, and counts for an index migration."""
    with connection(cfg.database, cfg.busy_timeout_ms) as con:
        existing = set(user_tables(con))
        tables = [t for t in touched_tables if t in existing] or sorted(existing)
        for table in tables:
            problems = pragma_check(con, "integrity_check", table)
            if problems:
                raise CheckFailed(
                    f"integrity_check of {table} failed after the migration",
                    f"{len(problems)} problem(s), first: {problems[0]}",
                    "the migration will be rolled back; keep the backup",
                )
        fk = foreign_key_problems(con)
        if fk:
            raise CheckFailed(
                f"The migration left {len(fk)} foreign key violation(s)",
                f"first: {fk[0][0]} rowid {fk[0][1]} -> {fk[0][2]}",
                "the migration will be rolled back",
            )
        counts = row_counts(con, tables)
    faults.point("integrity-done")
    if index_only and rows_changed:
        raise CheckFailed(
            "An index-only migration changed rows",
            f"{rows_changed} row(s) inserted, updated or deleted inside it",
            "the migration will be rolled back; check its statements",
        )
    return Integrity(tables, 0, counts, rows_changed)


integrity = step_task(check_integrity, "integrity")
