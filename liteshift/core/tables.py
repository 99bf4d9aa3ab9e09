"""Table introspection: a table's definition, key, columns, options and sequence, read from the schema."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from liteshift.core.errors import BadInput
from liteshift.core.migrations import CREATE_TABLE_RE
from liteshift.core.sql import quote_ident, strip_comments

ROWID_NAMES = ("rowid", "_rowid_", "oid")


OPTIONS_RE = re.compile(r"\)\s*([^()]*)$")


AUTOINCREMENT_RE = re.compile(r"\bAUTOINCREMENT\b", re.IGNORECASE)


@dataclass(frozen=True)
class Table:
    """What the live schema says about a table, read inside the caller's transaction."""

    name: str  # as stored
    sql: str
    without_rowid: bool
    key: tuple[str, ...]  # ("rowid",) or the WITHOUT ROWID primary key columns
    columns: tuple[str, ...]  # every column, generated ones included, in order
    stored: tuple[str, ...]  # the columns an INSERT may name (not generated)
    ipk: str | None  # the INTEGER PRIMARY KEY column (the rowid's alias), if any
    indexes: tuple[tuple[str, str], ...]  # (name, sql) of indexes written by CREATE INDEX
    triggers: tuple[tuple[str, str], ...]  # (name, sql) of triggers on the table
    dependents: tuple[tuple[str, str, str], ...]  # (type, name, sql): views, other tables' triggers
    unique_sets: tuple[tuple[str, ...], ...]  # column sets of every UNIQUE index and the key
    sequence: int | None  # sqlite_sequence value (AUTOINCREMENT)


def read_table(con: sqlite3.Connection, table: str) -> Table:
    """The table's definition, columns, key, indexes, triggers and dependents; BadInput if absent."""
    row = con.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE", (table,)
    ).fetchone()
    if row is None or row[0].lower().startswith(("sqlite_", "liteshift_")):
        raise BadInput(
            f"Table {table!r} does not exist",
            "a rebuild replaces an existing table's definition",
            "check the name after '-- migrate:rebuild' (quote names with spaces)",
        )
    name, sql = row
    if sql.upper().startswith("CREATE VIRTUAL"):
        raise BadInput(
            f"Table {name!r} is a virtual table",
            "its storage belongs to its module (FTS, R*Tree); a rebuild cannot copy it",
            "recreate the virtual table with ordinary statements under '-- migrate:up'",
        )
    return describe(con, name, sql)


def describe(con: sqlite3.Connection, name: str, sql: str) -> Table:
    q = quote_ident(name)
    xinfo = con.execute(f"PRAGMA table_xinfo({q})").fetchall()  # cid, name, type, notnull, dflt, pk, hidden
    columns = tuple(r[1] for r in xinfo)
    stored = tuple(r[1] for r in xinfo if r[6] == 0)
    without_rowid = is_without_rowid(sql)
    pk = sorted((r[5], r[1], r[2]) for r in xinfo if r[5])
    ipk = pk[0][1] if len(pk) == 1 and pk[0][2].upper() == "INTEGER" and not without_rowid else None
    if without_rowid:
        key: tuple[str, ...] = tuple(c for _, c, _ in pk)
    else:
        free = [n for n in ROWID_NAMES if n.lower() not in {c.lower() for c in columns}]
        key = (free[0] if free else "rowid",)
    objects = con.execute(  # liteshift's own capture triggers are not the table's
        "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL AND type != 'table' "
        "AND name NOT LIKE 'liteshift~_%' ESCAPE '~' ORDER BY rowid"
    ).fetchall()
    indexes = tuple((n, s) for t, n, tbl, s in objects if t == "index" and tbl.lower() == name.lower())
    triggers = tuple((n, s) for t, n, tbl, s in objects if t == "trigger" and tbl.lower() == name.lower())
    lowered = name.lower()
    dependents = tuple(
        (t, n, s)
        for t, n, tbl, s in objects
        if t in ("view", "trigger") and tbl.lower() != lowered and lowered in s.lower()
    )
    unique_sets = [key] if without_rowid else []
    for _, idx_name, unique, *_ in con.execute(f"PRAGMA index_list({q})"):
        cols = [r[2] for r in con.execute(f"PRAGMA index_info({quote_ident(idx_name)})")]
        if unique and cols and None not in cols:
            unique_sets.append(tuple(cols))
    return Table(
        name=name,
        sql=sql,
        without_rowid=without_rowid,
        key=key,
        columns=columns,
        stored=stored,
        ipk=ipk,
        indexes=indexes,
        triggers=triggers,
        dependents=dependents,
        unique_sets=tuple(dict.fromkeys(unique_sets)),
        sequence=_sequence(con, name),
    )


def _options(sql: str) -> str:
    m = OPTIONS_RE.search(strip_comments(sql))
    return m.group(1) if m else ""


def _sequence(con: sqlite3.Connection, table: str) -> int | None:
    if con.execute("SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_sequence'").fetchone() is None:
        return None
    row = con.execute("SELECT seq FROM sqlite_sequence WHERE name = ? COLLATE NOCASE", (table,)).fetchone()
    return None if row is None else int(row[0])


def renamed(create_sql: str, new_name: str) -> str:
    """The CREATE TABLE statement with its table name replaced."""
    m = CREATE_TABLE_RE.match(create_sql)
    if m is None:
        raise BadInput("Not a CREATE TABLE statement", create_sql[:80], "write CREATE TABLE name (...)")
    return create_sql[: m.start("name")] + quote_ident(new_name) + create_sql[m.end("name") :]


def is_without_rowid(create_sql: str) -> bool:
    """True when a CREATE TABLE statement ends WITHOUT ROWID (its comments ignored)."""
    return "WITHOUT ROWID" in " ".join(_options(create_sql).upper().split())


def without_rowid(con: sqlite3.Connection, table: str) -> bool:
    sql = con.execute("SELECT sql FROM sqlite_schema WHERE name = ?", (table,)).fetchone()[0]
    return is_without_rowid(sql)


def pk(con: sqlite3.Connection, table: str) -> str:
    pk = sorted((r[5], r[1]) for r in con.execute(f"PRAGMA table_info({quote_ident(table)})") if r[5])
    return ", ".join(quote_ident(c) for _, c in pk)
