"""The blocking rebuild: SQLite's twelve steps inside the migration's one transaction.

The new table is created under a shadow name, filled, the old one dropped, the new one renamed, and the
table's indexes, triggers and the views and triggers elsewhere that name it are put back
(lang_altertable.html, "other kinds of table schema changes").
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from liteshift.core.errors import CheckFailed
from liteshift.core.migrations import Rebuild
from liteshift.core.sql import failure_detail, quote_ident, strip_comments
from liteshift.core.tables import AUTOINCREMENT_RE, Table, read_table, renamed
from liteshift.rebuild.foreign_keys import check_foreign_keys
from liteshift.rebuild.schema import Copy, RebuildStats, drop_online_objects, names, plan_copy


def rebuild_blocking(con: sqlite3.Connection, spec: Rebuild) -> RebuildStats:
    """The whole rebuild inside the caller's open transaction (foreign_keys already off)."""
    start = time.perf_counter()
    source = read_table(con, spec.table)
    copy = plan_copy(source, spec)
    shadow = names(source.name).shadow
    drop_online_objects(con, source.name)  # an online attempt that was given up
    execute(con, renamed(spec.create_sql, shadow), source)
    rows = execute(con, copy.insert(shadow, source), source).rowcount
    for kind, name, _ in source.dependents:
        con.execute(f"DROP {kind.upper()} {quote_ident(name)}")
    execute(con, f"DROP TABLE {quote_ident(source.name)}", source)
    execute(con, f"ALTER TABLE {quote_ident(shadow)} RENAME TO {quote_ident(source.name)}", source)
    for _, sql in source.indexes:
        execute(con, sql, source)
    restore_around(con, source, copy, dependents=True)
    seconds = time.perf_counter() - start
    return RebuildStats(source.name, "blocking", rows, 1, 0, seconds, seconds, seconds)


def execute(
    con: sqlite3.Connection, sql: str, source: Table, params: tuple[object, ...] = ()
) -> sqlite3.Cursor:
    try:
        return con.execute(sql, params)
    except sqlite3.Error as exc:
        raise CheckFailed(
            f"The rebuild of {source.name} failed",
            failure_detail(exc, sql),
            "nothing was changed (the transaction was rolled back); fix the data or the migration "
            "and run again",
        ) from exc


def restore_around(
    con: sqlite3.Connection,
    source: Table,
    copy: Copy,
    dependents: bool,
    fk_check: Callable[[], None] | None = None,
) -> None:
    """Triggers (and views and other triggers, when dropped) back; the AUTOINCREMENT sequence
    carried; the whole schema re-parsed; foreign keys checked. `source` is read in this transaction."""
    for _, sql in source.triggers:
        execute(con, sql, source)
    for _, _, sql in source.dependents if dependents else ():
        execute(con, sql, source)
    if source.sequence is not None and AUTOINCREMENT_RE.search(strip_comments(copy.target.sql)):
        updated = con.execute(
            "UPDATE main.sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (source.sequence, source.name)
        ).rowcount
        if not updated:
            con.execute(
                "INSERT INTO main.sqlite_sequence (name, seq) VALUES (?, ?)", (source.name, source.sequence)
            )
    reparse_schema(con, source.name)
    (fk_check or (lambda: check_foreign_keys(con, source.name)))()


def reparse_schema(con: sqlite3.Connection, table: str) -> None:
    """Make SQLite re-parse every view and trigger (a rename does): one naming a gone column fails."""
    probe = "liteshift_probe"
    con.execute("PRAGMA legacy_alter_table = OFF")
    con.execute(f"CREATE TABLE {probe} (x)")
    try:
        con.execute(f"ALTER TABLE {probe} RENAME TO {probe}_ok")
    except sqlite3.Error as exc:
        raise CheckFailed(
            f"The rebuild of {table} breaks the schema",
            str(exc),
            "a view or trigger names what the new definition removes: change it in the same "
            "migration (drop and recreate it under '-- migrate:up'); nothing was changed",
        ) from exc
    con.execute(f"DROP TABLE {probe}_ok")
