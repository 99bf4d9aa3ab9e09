"""Restore under proof: put back, from the backup, only what a migration changed, inside one write
transaction that first proves nothing else was written to it since.

The proof is recorded in the migration's own transaction (`make_proof`): the schema objects the
migration created, changed or dropped, the tables it rewrote, and the write-ledger counter of each
of those tables at its commit (liteshift.ledger). The rollback takes the write lock, checks that
every one of those objects and counters is as recorded (`problems`), and only then, in the same
transaction, drops what the migration made and copies those tables back from the backup, attached
read-only (`restore_changed`). A table the migration did not touch is not rewritten, so the
application's writes to it survive; a write to a table it did touch means a refusal, never a loss.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from liteshift import ledger, tracking
from liteshift.db import INTERNAL_PREFIXES, connection, write_transaction
from liteshift.sql import quote_ident

BACKUP_SCHEMA = "liteshift_backup"
Objects = dict[tuple[str, str], tuple[str, str]]  # (type, name) -> (table, sql)


def schema_objects(con: sqlite3.Connection, schema: str = "main") -> Objects:
    """The user's schema objects with SQL text (not SQLite's automatic indexes, nor liteshift's)."""
    rows = con.execute(f"SELECT type, name, tbl_name, sql FROM {schema}.sqlite_schema WHERE sql IS NOT NULL")
    return {
        (kind, name): (table, sql)
        for kind, name, table, sql in rows
        if not name.startswith(INTERNAL_PREFIXES) and not table.startswith(INTERNAL_PREFIXES)
    }


@dataclass(frozen=True)
class Before:
    """What the migration's transaction saw before its first statement."""

    objects: Objects
    writes: dict[str, int]
    watched: set[str]

    @classmethod
    def read(cls, con: sqlite3.Connection) -> Before:
        return cls(schema_objects(con), ledger.counts(con), ledger.guarded(con))


def changed_by(con: sqlite3.Connection, before: Before) -> tuple[list[list[Any]], list[str]]:
    """(objects the migration changed as [type, name, sql now or None], tables a restore reloads)."""
    after = schema_objects(con)
    objects = [
        [kind, name, after[(kind, name)][1] if (kind, name) in after else None]
        for kind, name in sorted(before.objects.keys() | after.keys())
        if before.objects.get((kind, name)) != after.get((kind, name))
    ]
    written = {t for t, n in ledger.counts(con).items() if before.writes.get(t) != n}
    tables = {str(name) for kind, name, _ in objects if kind == "table"} | written
    return objects, sorted(tables)


def make_proof(
    con: sqlite3.Connection, backup: str, before: Before, backup_writes: dict[str, int] | None
) -> tuple[dict[str, Any] | None, str]:
    """The proof a later rollback checks, or None and why none can be made. Called in the
    migration's transaction after its last statement; leaves the ledger on the reloaded tables."""
    objects, tables = changed_by(con, before)
    if tables and backup_writes is None:
        return None, f"the backup {backup} was taken without liteshift's write ledger"
    virtual = [
        t
        for (t,) in con.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL%'"
        )
        if any(x.lower() == t.lower() or x.lower().startswith(t.lower() + "_") for x in tables)
    ]
    if virtual:
        return None, f"it changes the virtual table {virtual[0]}, whose rows only its module can put back"
    existed = {name.lower() for kind, name in before.objects if kind == "table"}
    for table in (t for t in tables if t.lower() in existed):
        if table not in before.watched:
            return None, f"table {table} was not watched by the write ledger since the backup"
        if before.writes.get(table) != (backup_writes or {}).get(table):
            return None, f"table {table} was written between the backup and the migration's lock"
    return {"backup": backup, "objects": objects, "tables": tables}, ""


def seal(con: sqlite3.Connection, proof: dict[str, Any]) -> None:
    """Record the counters at the commit (after the ledger watches exactly the proof's tables)."""
    now = ledger.counts(con)
    proof["writes"] = {t: now.get(t, 0) for t in proof["tables"] if t in ledger.guarded(con)}


def problems(con: sqlite3.Connection, proof: dict[str, Any]) -> list[tuple[str, str]]:
    """Under the write lock: what changed since the migration in what a restore would overwrite,
    as (table or object name, what happened)."""
    found: list[tuple[str, str]] = []
    watched = ledger.guarded(con)
    counts = ledger.counts(con)
    live = schema_objects(con)
    for table, n in proof["writes"].items():
        if table not in watched or table not in counts:
            found.append((table, f"{table} (its write-ledger triggers are gone)"))
        elif counts[table] != n:
            found.append((table, f"{table} ({counts[table] - n} row write(s) since the migration)"))
    for kind, name, sql in proof["objects"]:
        now = live.get((kind, name))
        if (now[1] if now else None) != sql:
            found.append((name, f"{kind} {name} (its definition changed since the migration)"))
    return found


def restore_changed(con: sqlite3.Connection, proof: dict[str, Any]) -> list[str]:
    """Inside the open transaction (foreign_keys off, the backup attached as BACKUP_SCHEMA): drop
    what the migration made and put back, from the backup, what it changed. Returns the tables
    copied back."""
    live = schema_objects(con)
    saved = schema_objects(con, BACKUP_SCHEMA)
    tables = {t.lower() for t in proof["tables"]}
    changed = {(kind, name) for kind, name, _ in proof["objects"]}
    for kind in ("trigger", "view", "index", "table"):
        for k, name in sorted(k for k in live if k[0] == kind):
            if (k, name) in changed or (kind == "table" and name.lower() in tables):
                con.execute(f"DROP {kind.upper()} IF EXISTS main.{quote_ident(name)}")
    copied = []
    order = con.execute(
        f"SELECT type, name FROM {BACKUP_SCHEMA}.sqlite_schema WHERE sql IS NOT NULL "
        "ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END, rowid"
    ).fetchall()
    for kind, name in order:
        if (kind, name) not in saved:
            continue
        table, sql = saved[(kind, name)]
        if (kind, name) in changed or table.lower() in tables:
            con.execute(sql)
            if kind == "table":
                _copy_rows(con, name)
                copied.append(name)
    return copied


def _copy_rows(con: sqlite3.Connection, table: str) -> None:
    q = quote_ident(table)
    xinfo = con.execute(f"PRAGMA {BACKUP_SCHEMA}.table_xinfo({q})").fetchall()
    cols = [quote_ident(r[1]) for r in xinfo if r[6] == 0]
    sql = con.execute(f"SELECT sql FROM {BACKUP_SCHEMA}.sqlite_schema WHERE name = ?", (table,)).fetchone()[0]
    has_ipk = any(r[5] and r[2].upper() == "INTEGER" for r in xinfo) and sum(1 for r in xinfo if r[5]) == 1
    if "WITHOUT ROWID" not in " ".join(sql.upper().split()) and not has_ipk:
        cols = ["rowid", *cols]  # the rows keep their rowids, as the backup has them
    names = ", ".join(cols)
    con.execute(f"INSERT INTO main.{q} ({names}) SELECT {names} FROM {BACKUP_SCHEMA}.{q}")
    seq = (
        con.execute(f"SELECT seq FROM {BACKUP_SCHEMA}.sqlite_sequence WHERE name = ?", (table,)).fetchone()
        if _has_sequence(con, BACKUP_SCHEMA)
        else None
    )
    if seq is not None:
        con.execute("DELETE FROM main.sqlite_sequence WHERE name = ?", (table,))
        con.execute("INSERT INTO main.sqlite_sequence (name, seq) VALUES (?, ?)", (table, seq[0]))


def _has_sequence(con: sqlite3.Connection, schema: str) -> bool:
    sql = f"SELECT 1 FROM {schema}.sqlite_schema WHERE name = 'sqlite_sequence'"
    return con.execute(sql).fetchone() is not None


@dataclass(frozen=True)
class ChildCheck:
    """A foreign key from another table into a restored one, and the parent keys the restore
    removes (None: not known, check the whole child table)."""

    child: str
    columns: tuple[str, ...]
    keys: list[tuple[Any, ...]] | None


MAX_KEYS = 1000  # more parent keys vanishing than this: check the child table whole


def children_at_risk(con: sqlite3.Connection, tables: list[str]) -> list[ChildCheck]:
    """Before the restore: for each foreign key into a table about to be restored, the parent keys
    the live table has and the backup's has not. Only rows pointing at those can break, so a
    10M-row child of a 100-row parent is not scanned whole (unless the keys cannot be told)."""
    names = {t.lower(): t for t in tables}
    checks = []
    for (child,) in con.execute("SELECT name FROM main.sqlite_schema WHERE type = 'table'").fetchall():
        if child.startswith(INTERNAL_PREFIXES) or child.lower() in names:
            continue  # a restored child is checked whole by its own foreign_key_check
        fks: dict[int, list[tuple[str, str, str | None]]] = {}
        for fk_id, _, parent, col, pcol, *_ in con.execute(
            f"PRAGMA main.foreign_key_list({quote_ident(child)})"
        ):
            fks.setdefault(fk_id, []).append((parent, col, pcol))
        for pairs in fks.values():
            parent = names.get(pairs[0][0].lower())
            if parent is not None:
                cols = tuple(c for _, c, _ in pairs)
                checks.append(ChildCheck(child, cols, _vanishing(con, parent, [p for _, _, p in pairs])))
    return checks


def _vanishing(con: sqlite3.Connection, table: str, pcols: list[str | None]) -> list[tuple[Any, ...]] | None:
    if None in pcols:  # REFERENCES parent without columns: its primary key
        pk = sorted(
            (r[5], r[1]) for r in con.execute(f"PRAGMA main.table_info({quote_ident(table)})") if r[5]
        )
        pcols = [c for _, c in pk]
    if not pcols:
        return None
    cols = ", ".join(quote_ident(str(c)) for c in pcols)
    q = quote_ident(table)
    try:
        keys = con.execute(
            f"SELECT {cols} FROM main.{q} EXCEPT SELECT {cols} FROM {BACKUP_SCHEMA}.{q} LIMIT {MAX_KEYS + 1}"
        ).fetchall()
    except sqlite3.Error:
        return None  # the columns differ between the two: check the child whole
    return None if len(keys) > MAX_KEYS else [tuple(k) for k in keys]


def foreign_key_problems(con: sqlite3.Connection, tables: list[str], children: list[ChildCheck]) -> list[str]:
    """After the restore: rows of the restored tables, or of the children at risk, that point to
    no parent row."""
    found = []
    for t in tables:
        found += [
            f"{r[0]} rowid {r[1]} -> {r[2]}"
            for r in con.execute(f"PRAGMA main.foreign_key_check({quote_ident(t)})").fetchmany(5)
        ]
    for c in children:
        q = quote_ident(c.child)
        if c.keys is None:
            rows = con.execute(f"PRAGMA main.foreign_key_check({q})").fetchmany(5)
            found += [f"{r[0]} rowid {r[1]} -> {r[2]}" for r in rows]
            continue
        where = " AND ".join(f"{quote_ident(col)} = ?" for col in c.columns)
        for key in c.keys:
            if con.execute(f"SELECT count(*) FROM main.{q} WHERE {where}", key).fetchone()[0]:
                pairs = ", ".join(f"{col} = {v!r}" for col, v in zip(c.columns, key, strict=True))
                found.append(f"{c.child} rows with {pairs} (a parent row only the migration had)")
    return found[:5]


def proof_tables(con: sqlite3.Connection) -> set[str]:
    """The tables whose writes some applied migration's restore proof still counts."""
    return {t for row in tracking.read_tracking(con).values() if (p := row.proof()) for t in p["writes"]}


def trim_ledger(database: str, timeout_ms: int) -> list[str]:
    """Remove the write ledger's triggers from tables no proof needs (left by a backup whose run
    died, or failed, before its migration committed): they would tax every write for nothing."""
    with connection(database, timeout_ms) as con:
        if not ledger.exists(con):
            return []
        extra = ledger.guarded(con) - proof_tables(con)
        if not extra:
            return []
        with write_transaction(con, database, timeout_ms):
            ledger.keep_only(con, proof_tables(con))
    return [f"removed the write ledger left on {', '.join(sorted(extra))} by an unfinished run"]
