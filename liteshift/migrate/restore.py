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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from liteshift.core import tracking
from liteshift.core.db import INTERNAL_PREFIXES, connection, write_transaction
from liteshift.core.sql import quote_ident
from liteshift.core.tables import is_without_rowid
from liteshift.migrate import ledger

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


def changed_by(
    con: sqlite3.Connection, before: Before, written: set[str]
) -> tuple[list[list[Any]], list[str]]:
    """(objects the migration changed as [type, name, sql now or None], tables a restore puts back:
    those it redefined, created or dropped, and those it wrote rows of)."""
    after = schema_objects(con)
    objects = [
        [kind, name, after[(kind, name)][1] if (kind, name) in after else None]
        for kind, name in sorted(before.objects.keys() | after.keys())
        if before.objects.get((kind, name)) != after.get((kind, name))
    ]
    tables = {str(name) for kind, name, _ in objects if kind == "table"} | written
    return objects, sorted(tables)


def make_proof(
    con: sqlite3.Connection,
    backup: str,
    before: Before,
    backup_writes: dict[str, int] | None,
    written: set[str],
) -> tuple[dict[str, Any] | None, str]:
    """The proof a later rollback checks, or None and why none can be made. Called in the
    migration's transaction after its last statement; leaves the ledger on the reloaded tables."""
    objects, tables = changed_by(con, before, written)
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


@contextmanager
def tables_written(con: sqlite3.Connection) -> Iterator[set[str]]:
    """The user tables the statements prepared in the block may write, triggers' statements
    included. SQLite asks the authorizer once per statement as it is prepared (setting one expires
    every statement prepared before), so this costs nothing per row inside the migration's lock."""
    seen: set[str] = set()
    writes = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)

    def authorize(action: int, table: str | None, _c: str | None, db: str | None, _t: str | None) -> int:
        if action in writes and table and db in (None, "main") and not table.startswith(INTERNAL_PREFIXES):
            seen.add(table)
        return sqlite3.SQLITE_OK

    con.set_authorizer(authorize)
    try:
        yield seen
    finally:
        con.set_authorizer(None)


# Row-level restore. While the proof holds, the rows of a table the migration wrote but did not
# redefine differ from the backup's only where the migration wrote them: those rows are found by
# comparing the two by rowid in a read snapshot BEFORE the write lock (a full scan of both, which
# must not block the application), and only they are put back under the lock.
MAX_ROW_KEYS = 10_000  # more rows differ than this: the table is copied back whole


def rows_to_put_back(con: sqlite3.Connection, proof: dict[str, Any]) -> dict[str, list[int]]:
    """In a read snapshot (the backup attached): per table the restore may put back by rows, the
    rowids that differ from the backup's. Empty when the proof already fails at this snapshot (the
    check under the lock then refuses)."""
    con.execute("BEGIN")
    try:
        if problems(con, proof):
            return {}
        live, saved = schema_objects(con), schema_objects(con, BACKUP_SCHEMA)
        found = {}
        for table in proof["tables"]:
            key = ("table", table)
            if key not in live or live.get(key) != saved.get(key) or is_without_rowid(live[key][1]):
                continue  # redefined, created, dropped, or keyed otherwise: copied back whole
            keys = _differing_rowids(con, table)
            if keys is not None:
                found[table] = keys
        return found
    finally:
        con.execute("COMMIT")


def _differing_rowids(con: sqlite3.Connection, table: str) -> list[int] | None:
    q = quote_ident(table)
    cols = [quote_ident(r[1]) for r in con.execute(f"PRAGMA main.table_xinfo({q})") if r[6] == 0]
    same = " AND ".join(f"a.{c} IS b.{c} AND typeof(a.{c}) = typeof(b.{c})" for c in cols)
    limit = MAX_ROW_KEYS + 1
    changed = con.execute(
        f"SELECT b.rowid FROM {BACKUP_SCHEMA}.{q} AS b WHERE NOT EXISTS "
        f"(SELECT 1 FROM main.{q} AS a WHERE a.rowid = b.rowid AND {same}) LIMIT {limit}"
    ).fetchall()
    added = con.execute(
        f"SELECT a.rowid FROM main.{q} AS a WHERE NOT EXISTS "
        f"(SELECT 1 FROM {BACKUP_SCHEMA}.{q} AS b WHERE b.rowid = a.rowid) LIMIT {limit}"
    ).fetchall()
    keys = sorted({int(r[0]) for r in changed + added})
    return None if len(keys) > MAX_ROW_KEYS else keys


def restore_changed(
    con: sqlite3.Connection, proof: dict[str, Any], by_rows: dict[str, list[int]]
) -> list[str]:
    """Inside the open transaction (foreign_keys off, the backup attached as BACKUP_SCHEMA): drop
    what the migration made and put back, from the backup, what it changed: a table it redefined
    whole, a table it only wrote by the rows that differ (`by_rows`, from rows_to_put_back).
    Returns the tables put back."""
    live = schema_objects(con)
    saved = schema_objects(con, BACKUP_SCHEMA)
    for table, keys in by_rows.items():
        _restore_rows(con, table, keys, live)
    tables = {t.lower() for t in proof["tables"] if t not in by_rows}
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
    return copied + list(by_rows)


def _restore_rows(con: sqlite3.Connection, table: str, keys: list[int], live: Objects) -> None:
    """Put back the backup's version of these rows of a table the migration did not redefine; the
    table's own triggers are set aside meanwhile (a restore is not an application write)."""
    q = quote_ident(table)
    triggers = [
        (name, sql) for (kind, name), (tbl, sql) in live.items() if kind == "trigger" and tbl == table
    ]
    for name, _ in triggers:
        con.execute(f"DROP TRIGGER main.{quote_ident(name)}")
    names = ", ".join(_insert_columns(con, table, "main"))
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        marks = ", ".join("?" for _ in chunk)
        con.execute(f"DELETE FROM main.{q} WHERE rowid IN ({marks})", chunk)
        source = f"SELECT {names} FROM {BACKUP_SCHEMA}.{q} WHERE rowid IN ({marks})"
        con.execute(f"INSERT INTO main.{q} ({names}) {source}", chunk)
    _copy_sequence(con, table)
    for _, sql in triggers:
        con.execute(sql)


def _copy_rows(con: sqlite3.Connection, table: str) -> None:
    q = quote_ident(table)
    names = ", ".join(_insert_columns(con, table, BACKUP_SCHEMA))
    con.execute(f"INSERT INTO main.{q} ({names}) SELECT {names} FROM {BACKUP_SCHEMA}.{q}")
    _copy_sequence(con, table)


def _insert_columns(con: sqlite3.Connection, table: str, schema: str) -> list[str]:
    """The columns an INSERT names, rowid first for a rowid table without an INTEGER PRIMARY KEY
    (the rows keep their rowids, as the backup has them)."""
    xinfo = con.execute(f"PRAGMA {schema}.table_xinfo({quote_ident(table)})").fetchall()
    cols = [quote_ident(r[1]) for r in xinfo if r[6] == 0]
    sql = con.execute(f"SELECT sql FROM {schema}.sqlite_schema WHERE name = ?", (table,)).fetchone()[0]
    has_ipk = sum(1 for r in xinfo if r[5]) == 1 and any(r[5] and r[2].upper() == "INTEGER" for r in xinfo)
    if not is_without_rowid(sql) and not has_ipk:
        return ["rowid", *cols]
    return cols


def _copy_sequence(con: sqlite3.Connection, table: str) -> None:
    """The AUTOINCREMENT sequence of the table as the backup has it."""
    if not _has_sequence(con, BACKUP_SCHEMA):
        return
    seq = con.execute(f"SELECT seq FROM {BACKUP_SCHEMA}.sqlite_sequence WHERE name = ?", (table,)).fetchone()
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


def children_at_risk(con: sqlite3.Connection, tables: list[str], whole: set[str]) -> list[ChildCheck]:
    """Before the restore: for each foreign key into a table about to be restored, the parent keys
    the live table has and the backup's has not. Only rows pointing at those can break, so a
    10M-row child of a 100-row parent is not scanned whole (unless the keys cannot be told)."""
    names = {t.lower(): t for t in tables}
    checks = []
    for (child,) in con.execute("SELECT name FROM main.sqlite_schema WHERE type = 'table'").fetchall():
        if child.startswith(INTERNAL_PREFIXES) or child.lower() in {w.lower() for w in whole}:
            continue  # a child copied back whole is checked whole by its own foreign_key_check
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


def foreign_key_problems(
    con: sqlite3.Connection, whole: list[str], by_rows: dict[str, list[int]], children: list[ChildCheck]
) -> list[str]:
    """After the restore: rows of the tables copied back whole, the rows put back one by one, or
    rows of the children at risk, that point to no parent row."""
    found = []
    for t in whole:
        found += [
            f"{r[0]} rowid {r[1]} -> {r[2]}"
            for r in con.execute(f"PRAGMA main.foreign_key_check({quote_ident(t)})").fetchmany(5)
        ]
    for t, keys in by_rows.items():
        found += _orphans_among(con, t, keys)
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


def _orphans_among(con: sqlite3.Connection, table: str, keys: list[int]) -> list[str]:
    """The rows among these rowids whose foreign keys point to no parent row."""
    q = quote_ident(table)
    fks: dict[int, list[tuple[str, str, str | None]]] = {}
    for fk_id, _, parent, col, pcol, *_ in con.execute(f"PRAGMA main.foreign_key_list({q})"):
        fks.setdefault(fk_id, []).append((parent, col, pcol))
    found = []
    for pairs in fks.values():
        parent = pairs[0][0]
        pcols = [p for _, _, p in pairs]
        if None in pcols:
            pk = sorted(
                (r[5], r[1]) for r in con.execute(f"PRAGMA main.table_info({quote_ident(parent)})") if r[5]
            )
            pcols = [c for _, c in pk]
        present = " AND ".join(f"c.{quote_ident(col)} IS NOT NULL" for _, col, _ in pairs)
        match = " AND ".join(
            f"p.{quote_ident(str(pc))} = c.{quote_ident(col)}"
            for (_, col, _), pc in zip(pairs, pcols, strict=False)
        )
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = con.execute(
                f"SELECT c.rowid FROM main.{q} AS c WHERE c.rowid IN ({marks}) AND {present} AND NOT EXISTS "
                f"(SELECT 1 FROM main.{quote_ident(parent)} AS p WHERE {match})",
                chunk,
            ).fetchmany(5)
            found += [f"{table} rowid {r[0]} -> {parent}" for r in rows]
    return found


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


def restored_label(by_rows: dict[str, list[int]], tables: list[str]) -> str:
    """The tables put back, for the rollback's message: whole, or by the rows that differed."""
    rows = by_rows
    return ", ".join(f"{t} ({len(rows[t])} row(s))" if t in rows else t for t in tables)
