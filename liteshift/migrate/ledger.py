"""The write ledger: per-table write counters kept by triggers, the proof that a restore loses nothing.

A row count and max rowid miss every UPDATE, and a DELETE followed by an INSERT of the same rowid
(SQLITE_FACTS.md, "Undo and replicas"); `PRAGMA data_version` and the file change counter are not
per-commit counters either. A trigger fires for every row any connection inserts, updates or
deletes, `INSERT OR REPLACE` and upserts included, so a counter the triggers bump still holds the
value recorded at the migration's commit exactly when no write reached that table since.

The triggers are put on before the backup is taken (so its snapshot holds the counters too) and
kept, after the commit, only on the tables a restore of the backup would overwrite. A trigger that
is gone (a table dropped and created again, or someone dropped it) is noticed: a proof needs the
exact trigger text, so a missing one means "not proven", never "nothing written".
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from liteshift.core.db import connection, user_tables
from liteshift.core.sql import quote_ident

LEDGER_TABLE = "liteshift_writes"
# Qualified with main: a restore runs with the backup (which has its own ledger) attached.
LEDGER_DDL = f"CREATE TABLE IF NOT EXISTS main.{LEDGER_TABLE} (tbl TEXT PRIMARY KEY, n INTEGER NOT NULL)"
PREFIX = "liteshift_w_"
EVENTS = {"i": "INSERT", "u": "UPDATE", "d": "DELETE"}


def _trigger_name(table: str, op: str) -> str:
    tag = hashlib.sha256(table.lower().encode()).hexdigest()[:8]
    return f"{PREFIX}{tag}_{op}"


def trigger_sql(table: str, op: str) -> str:
    """The exact text of one ledger trigger: bump the table's counter once per written row."""
    literal = "'" + table.replace("'", "''") + "'"
    return (
        f"CREATE TRIGGER {_trigger_name(table, op)} AFTER {EVENTS[op]} ON {quote_ident(table)} "
        f"BEGIN UPDATE {LEDGER_TABLE} SET n = n + 1 WHERE tbl = {literal}; END"
    )


def guardable_tables(con: sqlite3.Connection) -> list[str]:
    """User tables a trigger can watch: not virtual ones (their shadow tables hold the rows)."""
    virtual = {
        r[0]
        for r in con.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL%'"
        )
    }
    return [t for t in user_tables(con) if t not in virtual]


def _ledger_triggers(con: sqlite3.Connection) -> dict[str, str]:
    rows = con.execute(
        "SELECT name, sql FROM main.sqlite_schema WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
        (len(PREFIX), PREFIX),
    )
    return {name: sql for name, sql in rows}


def exists(con: sqlite3.Connection, schema: str = "main") -> bool:
    """True when the ledger table exists in the given attached schema."""
    sql = f"SELECT 1 FROM {schema}.sqlite_schema WHERE type = 'table' AND name = ?"
    return con.execute(sql, (LEDGER_TABLE,)).fetchone() is not None


def counts(con: sqlite3.Connection, schema: str = "main") -> dict[str, int]:
    """Writes counted per table so far ({} when there is no ledger)."""
    if not exists(con, schema):
        return {}
    return {t: int(n) for t, n in con.execute(f"SELECT tbl, n FROM {schema}.{LEDGER_TABLE}")}


def backup_counts(backup: str | Path) -> dict[str, int] | None:
    """The counters a finished backup holds (None: it was taken without a ledger, or is unreadable)."""
    if not Path(backup).is_file():
        return None
    try:
        with connection(backup, immutable=True) as con:
            return counts(con) if exists(con) else None
    except sqlite3.Error:
        return None


def guarded(con: sqlite3.Connection) -> set[str]:
    """Tables whose three ledger triggers are all in place with their exact text."""
    present = _ledger_triggers(con)
    return {
        t
        for t in user_tables(con)
        if all(present.get(_trigger_name(t, op)) == trigger_sql(t, op) for op in EVENTS)
    }


def keep_only(con: sqlite3.Connection, tables: Iterable[str]) -> None:
    """Watch exactly these tables (inside the caller's transaction); no table: remove the ledger.

    A counter keeps its value while its table is watched again, so a proof recorded earlier stays
    comparable; a table that was not watched starts being watched now, which proves nothing about
    the time before.
    """
    wanted = {t for t in tables}
    names = {t.lower() for t in wanted}
    for name in _ledger_triggers(con):
        con.execute(f"DROP TRIGGER main.{quote_ident(name)}")
    if not wanted:
        con.execute(f"DROP TABLE IF EXISTS main.{LEDGER_TABLE}")
        return
    con.execute(LEDGER_DDL)
    for table in (t for t in guardable_tables(con) if t.lower() in names):
        con.execute(f"INSERT OR IGNORE INTO main.{LEDGER_TABLE} (tbl, n) VALUES (?, 0)", (table,))
        for op in EVENTS:
            con.execute(trigger_sql(table, op))


def pause(con: sqlite3.Connection) -> None:
    """Drop the triggers, keep the counters (inside the caller's transaction): liteshift's own
    writes need no counting, and keep_only puts the triggers back before that transaction ends."""
    for name in _ledger_triggers(con):
        con.execute(f"DROP TRIGGER main.{quote_ident(name)}")


def bump(con: sqlite3.Connection, tables: Iterable[str]) -> None:
    """Count a write to each table (its writes went uncounted while the triggers were paused), so
    that an earlier proof over it no longer holds."""
    if exists(con):
        for table in tables:
            con.execute(f"UPDATE main.{LEDGER_TABLE} SET n = n + 1 WHERE tbl = ?", (table,))


def watch_all(con: sqlite3.Connection) -> None:
    """Watch every user table (before a backup whose restore may be needed)."""
    keep_only(con, guardable_tables(con))
