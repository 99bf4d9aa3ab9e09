"""Foreign keys around a rebuild: switched off outside the transaction, parsed, and checked after.

The caller owns the connection and sets `PRAGMA foreign_keys = OFF` outside any transaction
(`foreign_keys_off`): with it on, dropping a parent table deletes or nulls its children.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from liteshift.core.errors import CheckFailed
from liteshift.core.sql import quote_ident
from liteshift.rebuild.constraints import table_constraints


@contextmanager
def foreign_keys_off(con: sqlite3.Connection) -> Iterator[None]:
    """foreign_keys OFF for the block, set outside a transaction and checked to have taken effect."""
    was_on = bool(con.execute("PRAGMA foreign_keys").fetchone()[0])
    con.execute("PRAGMA foreign_keys = OFF")
    if con.execute("PRAGMA foreign_keys").fetchone()[0]:
        raise CheckFailed(
            "Could not turn foreign_keys off on the migrating connection",
            "with it on, dropping the old table would delete or null the rows of its children",
            "make sure no transaction is open on the connection; nothing was written",
        )
    try:
        yield
    finally:
        if was_on and not con.in_transaction:
            con.execute("PRAGMA foreign_keys = ON")


def check_foreign_keys(con: sqlite3.Connection, table: str, itself: bool = True) -> None:
    """foreign_key_check of the table (unless not `itself`) and of every table that references it."""
    children = [
        t
        for (t,) in con.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        if not t.startswith("sqlite_")
        and t.lower() != table.lower()
        and any(
            r[2].lower() == table.lower() for r in con.execute(f"PRAGMA foreign_key_list({quote_ident(t)})")
        )
    ]
    for t in [table, *children] if itself else children:
        rows = con.execute(f"PRAGMA foreign_key_check({quote_ident(t)})").fetchmany(6)
        fk_failure(table, [(r[0], f"rowid {r[1]}", r[2]) for r in rows])


def fk_failure(table: str, rows: list[tuple[str, str, str]], hint: str = "") -> None:
    """Raise when rows (child table, key, parent table) point to no parent row."""
    if rows:
        first = ", ".join(f"{child} {key} -> {parent}" for child, key, parent in rows[:5])
        raise CheckFailed(
            f"The rebuild of {table} breaks a foreign key",
            f"{'over 5' if len(rows) > 5 else len(rows)} row(s) point to no parent row, first: {first}",
            hint or "nothing was changed (the transaction was rolled back); fix those rows and run again",
        )


@dataclass(frozen=True)
class ForeignKey:
    """A foreign key of a rebuild's target definition, with the parent's columns resolved."""

    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]

    def violations(self, con: sqlite3.Connection, table: str, key: tuple[str, ...], extra: str = "") -> str:
        """SELECT of the keys of `table`'s rows (AS c) that match no parent row; `extra` narrows it."""
        present = " AND ".join(f"c.{quote_ident(c)} IS NOT NULL" for c in self.columns)
        match = " AND ".join(
            f"p.{quote_ident(pc)} = c.{quote_ident(c)}"
            for c, pc in zip(self.columns, self.parent_columns, strict=True)
        )
        keys = ", ".join(f"c.{quote_ident(k)}" for k in key)
        return (
            f"SELECT {keys} FROM {quote_ident(table)} AS c WHERE {present} AND NOT EXISTS "
            f"(SELECT 1 FROM {quote_ident(self.parent)} AS p WHERE {match}){extra} LIMIT 6"
        )


def foreign_keys(con: sqlite3.Connection, create_sql: str) -> list[ForeignKey] | None:
    """The target's foreign keys; None when one cannot be resolved (the full check then runs)."""
    found = []
    for c in table_constraints(create_sql):
        if c.kind != "FOREIGN KEY" or c.ref_table is None:
            continue
        cols = c.ref_columns or tuple(
            name
            for _, name in sorted(
                (r[5], r[1]) for r in con.execute(f"PRAGMA table_info({quote_ident(c.ref_table)})") if r[5]
            )
        )
        if len(cols) != len(c.columns):
            return None  # a missing parent or no parent key: SQLite's own check says what is wrong
        found.append(ForeignKey(c.columns, c.ref_table, cols))
    return found
