"""Index definitions as SQLite reports them, comparable between two databases."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from liteshift.core.sql import quote_ident, strip_comments

PARTIAL_RE = re.compile(r"\bWHERE\b(?P<where>.*)$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class IndexDef:
    """An index definition as SQLite reports it: comparable between databases."""

    name: str
    table: str
    columns: tuple[tuple[str | None, bool], ...]  # (column or expression marker, desc)
    unique: bool
    where: str | None

    def describe(self) -> str:
        cols = ", ".join(f"{c or '<expr>'}{' DESC' if d else ''}" for c, d in self.columns)
        extra = " UNIQUE" if self.unique else ""
        where = f" WHERE {self.where}" if self.where else ""
        return f"{self.table}({cols}){extra}{where}"


def index_definition(con: sqlite3.Connection, name: str) -> IndexDef | None:
    """Read an index's definition with PRAGMA index_xinfo; None when it does not exist."""
    row = con.execute(
        "SELECT tbl_name, sql FROM sqlite_schema WHERE type='index' AND name=?", (name,)
    ).fetchone()
    if row is None:
        return None
    table, sql = row
    cols = tuple(
        (r[2], bool(r[3]))
        for r in con.execute(f"PRAGMA index_xinfo({quote_ident(name)})")
        if r[5]  # key columns only; the rest is the rowid
    )
    unique = bool(
        next((r[2] for r in con.execute(f"PRAGMA index_list({quote_ident(table)})") if r[1] == name), 0)
    )
    where = None
    if sql:
        m = PARTIAL_RE.search(strip_comments(sql))
        where = " ".join(m.group("where").split()) if m else None
    return IndexDef(name, table, cols, unique, where)
