"""Derived downs: the statements that undo an up, read from the schema just before each step runs.

A rollback that runs an inverse keeps every row the application wrote since the migration (it
changes the database as it is now); restoring the backup is the last resort. An up step has an
inverse when it only adds or renames something, or removes a schema object whose definition can
be read before it goes:

- CREATE INDEX / VIEW / TRIGGER -> DROP it (nothing, when IF NOT EXISTS found it already there);
- DROP INDEX / VIEW / TRIGGER -> its CREATE statement as it was;
- ALTER TABLE ADD COLUMN -> DROP COLUMN; RENAME COLUMN a TO b -> RENAME COLUMN b TO a;
  RENAME TO -> RENAME back;
- ANALYZE, REINDEX -> nothing;
- a rebuild -> a rebuild back to the table's definition before it, whose `-- migrate:columns` are
  the reverse of the up's renames (`new = old`, a bare old column). A rebuild that drops a column
  or rewrites one with an expression has no inverse: only the backup holds the old values.

Anything else (rows written, tables created or dropped, a PRAGMA) has none: None.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from liteshift.core import tables
from liteshift.core.errors import MigrationError
from liteshift.core.migrations import IDENT, Migration, Rebuild, Step
from liteshift.core.sql import quote_ident, strip_comments, unquote
from liteshift.rebuild import schema

_IF_NOT = r"(?P<ifnot>IF\s+NOT\s+EXISTS\s+)?"
_CREATE_RE = re.compile(
    rf"^CREATE\s+(?:UNIQUE\s+)?(?P<kind>INDEX|VIEW|TRIGGER)\s+{_IF_NOT}(?P<name>{IDENT})\s*(?P<after>.?)",
    re.IGNORECASE | re.DOTALL,
)
_DROP_RE = re.compile(
    rf"^DROP\s+(?P<kind>INDEX|VIEW|TRIGGER)\s+(?:IF\s+EXISTS\s+)?(?P<name>{IDENT})\s*$", re.IGNORECASE
)
_ALTER = rf"^ALTER\s+TABLE\s+(?P<table>{IDENT})\s+"
_ADD_RE = re.compile(_ALTER + rf"ADD\s+(?:COLUMN\s+)?(?P<col>{IDENT})\b", re.IGNORECASE)
_RENAME_COL_RE = re.compile(
    _ALTER + rf"RENAME\s+(?:COLUMN\s+)?(?P<old>{IDENT})\s+TO\s+(?P<new>{IDENT})\s*$", re.IGNORECASE
)
_RENAME_TABLE_RE = re.compile(_ALTER + rf"RENAME\s+TO\s+(?P<new>{IDENT})\s*$", re.IGNORECASE)
_NOOP_RE = re.compile(r"^(ANALYZE|REINDEX)\b", re.IGNORECASE)


def inverse_of(con: sqlite3.Connection, step: Step) -> list[Step] | None:
    """invert(), None also when the step itself fails or is refused where it runs."""
    try:
        return invert(con, step)
    except (MigrationError, sqlite3.Error):
        return None


def invert(con: sqlite3.Connection, step: Step) -> list[Step] | None:
    """The steps that undo `step`, read from the schema as it is before `step` runs; None: none."""
    if isinstance(step, Rebuild):
        back = invert_rebuild(con, step)
        return None if back is None else [back]
    return _invert_statement(con, " ".join(strip_comments(step).split()))


def _invert_statement(con: sqlite3.Connection, text: str) -> list[Step] | None:
    if _NOOP_RE.match(text):
        return []
    if m := _CREATE_RE.match(text):
        if m.group("after") == ".":  # schema-qualified (main.x, temp.x): not ours to guess
            return None
        kind, name = m.group("kind").upper(), unquote(m.group("name"))
        if m.group("ifnot") and _definition(con, kind, name) is not None:
            return []  # it was there before: the up did nothing
        return [f"DROP {kind} {quote_ident(name)}"]
    if m := _DROP_RE.match(text):
        sql = _definition(con, m.group("kind").upper(), unquote(m.group("name")))
        if sql is None:
            return None if "IF EXISTS" not in text.upper() else []
        return [sql]
    if m := _RENAME_COL_RE.match(text):
        table, old, new = (unquote(m.group(g)) for g in ("table", "old", "new"))
        return [f"ALTER TABLE {quote_ident(table)} RENAME COLUMN {quote_ident(new)} TO {quote_ident(old)}"]
    if m := _RENAME_TABLE_RE.match(text):
        table, new = unquote(m.group("table")), unquote(m.group("new"))
        return [f"ALTER TABLE {quote_ident(new)} RENAME TO {quote_ident(table)}"]
    if m := _ADD_RE.match(text):
        if m.group("col").upper() in ("CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"):
            return None
        table, col = unquote(m.group("table")), unquote(m.group("col"))
        return [f"ALTER TABLE {quote_ident(table)} DROP COLUMN {quote_ident(col)}"]
    return None


def _definition(con: sqlite3.Connection, kind: str, name: str) -> str | None:
    row = con.execute(
        "SELECT sql FROM sqlite_schema WHERE type = ? AND name = ? COLLATE NOCASE", (kind.lower(), name)
    ).fetchone()
    return None if row is None else row[0]


def invert_rebuild(con: sqlite3.Connection, spec: Rebuild) -> Rebuild | None:
    """A rebuild back to the table's current definition that gives every old value back, or None.

    The up's `new = old` lines (a bare old column) are renames and map back; a column the new
    definition keeps under its name comes back by name. An old column the new table drops, or
    fills from an expression, has its old values only in the backup.
    """
    source = tables.read_table(con, spec.table)
    target = schema.plan_copy(source, spec).target
    old_cols = {c.lower(): c for c in source.columns}
    new_cols = {c.lower(): c for c in target.columns}
    renames: dict[str, str] = {}  # old column (lower) -> the new column holding its values
    rewritten: set[str] = set()  # new columns filled from something else than their own name
    for new, expr in spec.columns:
        bare = unquote(expr.strip()) if re.fullmatch(IDENT, expr.strip()) else None
        if bare is not None and bare.lower() in old_cols:
            renames.setdefault(bare.lower(), new_cols.get(new.lower(), new))
            if bare.lower() != new.lower():
                rewritten.add(new.lower())
        else:
            rewritten.add(new.lower())
    back: list[tuple[str, str]] = []
    for col in source.stored:
        low = col.lower()
        if low in renames and renames[low].lower() != low:
            back.append((col, quote_ident(renames[low])))
        elif low in new_cols and low not in rewritten:
            continue  # copied back by name
        else:
            return None
    return Rebuild(source.name, source.sql, tuple(back))


def to_json(steps: list[Step]) -> list[dict[str, Any]]:
    """Steps as JSON-safe records, for the tracking table."""
    return [
        {"sql": s}
        if isinstance(s, str)
        else {"rebuild": s.table, "create_sql": s.create_sql, "columns": [list(c) for c in s.columns]}
        for s in steps
    ]


def from_json(records: list[dict[str, Any]]) -> list[Step]:
    """The steps to_json wrote."""
    return [
        r["sql"]
        if "sql" in r
        else Rebuild(r["rebuild"], r["create_sql"], tuple((c, e) for c, e in r.get("columns", [])))
        for r in records
    ]


class Recorder:
    """Collects the inverse of each step of one migration as it is applied (or rehearsed)."""

    def __init__(self) -> None:
        self.parts: list[list[Step] | None] = []
        self.rebuilds_back: list[Rebuild | None] = []

    def before(self, con: sqlite3.Connection, step: Step) -> None:
        """Read the inverse of `step` from the schema now, before it runs."""
        self.add(step, inverse_of(con, step))

    def add(self, step: Step, inv: list[Step] | None) -> None:
        """Record the inverse of `step`, read earlier (or just now by before())."""
        self.parts.append(inv)
        if isinstance(step, Rebuild):
            back = inv[0] if inv else None
            self.rebuilds_back.append(back if isinstance(back, Rebuild) else None)

    @property
    def derived(self) -> list[Step] | None:
        """The whole derived down, newest step first; None when a step has no inverse."""
        if any(p is None for p in self.parts):
            return None
        return [s for part in reversed(self.parts) for s in part or []]


def down_steps(m: Migration, derived: list[Step] | None, backs: list[Rebuild | None]) -> list[Step] | None:
    """What a rollback runs for a migration: its down section, then its rebuilds undone newest
    first; without a down section, its derived down. None: only the backup can undo it (a rebuild
    that drops or rewrites a column cannot be undone by a rebuild)."""
    if m.down:
        return None if None in backs else [*m.down, *(b for b in reversed(backs) if b is not None)]
    return derived


def undo_kind(m: Migration, recorder: Recorder) -> str:
    """ "down-section", "derived", or "backup": how the migration just recorded is undone."""
    if down_steps(m, recorder.derived, recorder.rebuilds_back) is None:
        return "backup"
    return "down-section" if m.down else "derived"
