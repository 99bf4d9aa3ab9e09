"""Rehearsal: the pending migrations' ups, then their downs, on an empty in-memory copy of the schema.

It runs before anything is written. The ups must apply to this database's schema; what they
create is read from the copy (the definitions step 4 verifies); and the downs, run newest first,
must bring the schema back to what it was, so a rollback is known to work before it is needed.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from typing import ClassVar

from liteshift.core import tables
from liteshift.core.errors import BadInput, ErrorOutcome, MigrationError
from liteshift.core.indexes import IndexDef, index_definition
from liteshift.core.migrations import Migration, Rebuild, Step, dropped_index_names
from liteshift.core.sql import failure_detail, quote_ident, same_sql_text
from liteshift.migrate import inverse, restore
from liteshift.rebuild import blocking

INDEX_ONLY_RE = re.compile(r"^(CREATE\s+(UNIQUE\s+)?INDEX|DROP\s+INDEX|ANALYZE|REINDEX)\b", re.I)
Shape = dict[str, tuple[str, str, object]]  # name -> (type, table, definition)


class NotReversible(BadInput):
    """A migration's down fails, or does not bring the schema back, on a copy of the schema."""

    outcome: ClassVar[ErrorOutcome] = "failed"


@dataclass(frozen=True)
class Rehearsal:
    """What the pending migrations do to a copy of the schema."""

    indexes: dict[str, IndexDef]  # declared definitions of created indexes
    touched_tables: tuple[str, ...]
    index_only: bool
    downs_checked: bool = False  # every migration has a down and it undoes its up
    carried: dict[str, IndexDef] = field(default_factory=dict)  # indexes a rebuild puts back
    undo: dict[str, str] = field(default_factory=dict)  # label -> down-section, derived or backup
    may_write: tuple[str, ...] = ()  # existing tables the ups write rows of or redefine


def schema_copy(con: sqlite3.Connection) -> sqlite3.Connection:
    """An in-memory database with the same tables, indexes, views and triggers, and no rows."""
    mem = sqlite3.connect(":memory:", isolation_level=None)
    rows = con.execute(
        "SELECT type, sql FROM sqlite_schema WHERE sql IS NOT NULL "
        "AND name NOT LIKE 'sqlite_%' ORDER BY CASE type WHEN 'table' THEN 0 "
        "WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, rowid"
    ).fetchall()
    for _type, sql in rows:
        try:
            mem.execute(sql)
        except sqlite3.OperationalError as exc:
            # A virtual table (FTS, R*Tree) already made its shadow tables when it was created.
            if "already exists" not in str(exc):
                raise
    return mem


def _rows(mem: sqlite3.Connection) -> dict[str, tuple[str, str, str, str | None]]:
    return {r[0]: r for r in mem.execute("SELECT name, type, tbl_name, sql FROM sqlite_schema")}


def schema_shape(mem: sqlite3.Connection) -> Shape:
    """The user's schema objects, compared by meaning: indexes by definition, the rest by text."""
    shape: Shape = {}
    for name, kind, table, sql in _rows(mem).values():
        if name.startswith(("sqlite_", "liteshift_")):
            continue
        text = sql or ""
        if kind == "table":  # a rebuilt table's text says CREATE TABLE "name": compare the body
            text = text[text.find("(") :]
        definition = index_definition(mem, name) if kind == "index" else same_sql_text(text)
        shape[name] = (kind, table, definition)
    return shape


def rehearse(con: sqlite3.Connection, migrations: list[Migration]) -> Rehearsal:
    """Apply the ups, then the downs, to an empty copy of the schema; read what the ups create."""
    mem = schema_copy(con)
    try:
        before = _rows(mem)
        replaced = dropped_index_names(migrations)
        for name in (n for m in migrations for n in m.created_index_names() if n not in replaced):
            # Rehearse without an index of the same name so the declared form is what we read.
            mem.execute(f"DROP INDEX IF EXISTS {quote_ident(name)}")
        baseline = schema_shape(mem)
        created: dict[str, IndexDef] = {}
        carried: dict[str, IndexDef] = {}
        downs: dict[str, list[Step] | None] = {}
        undo: dict[str, str] = {}
        written: set[str] = set()
        for mig in migrations:
            recorder = inverse.Recorder()
            for stmt in mig.steps:
                recorder.before(mem, stmt)  # the derived down, read as the migration will
                with restore.tables_written(mem) as seen:  # rows it writes, its triggers' too
                    _run(mem, stmt, mig, "up")
                written |= seen
            downs[mig.version] = inverse.down_steps(mig, recorder.derived, recorder.rebuilds_back)
            undo[mig.label] = inverse.undo_kind(mig, recorder)
            created.update(
                (name, d) for name in mig.created_index_names() if (d := index_definition(mem, name))
            )
            for r in mig.rebuilds:
                for name, _ in tables.read_table(mem, r.table).indexes:
                    if name not in created and (d := index_definition(mem, name)):
                        carried[name] = d
        after = _rows(mem)
        downs_checked = bool(migrations) and all(downs[m.version] is not None for m in migrations)
        if downs_checked:
            _rehearse_downs(mem, migrations, baseline, downs)
    finally:
        mem.close()
    changed = {k for k in after if before.get(k) != after[k]} | {k for k in before if k not in after}
    existing = {name for name, kind, _, _ in before.values() if kind == "table"}
    touched = sorted({(after.get(k) or before[k])[2] for k in changed} | {d.table for d in created.values()})
    return Rehearsal(
        indexes=created,
        touched_tables=tuple(t for t in touched if not t.startswith(("sqlite_", "liteshift_"))),
        index_only=index_only(migrations),
        downs_checked=downs_checked,
        carried={k: v for k, v in carried.items() if k not in created},
        undo=undo,
        may_write=tuple(sorted((written | set(touched)) & existing)),
    )


def index_only(migrations: list[Migration]) -> bool:
    """True when the migrations only create, drop or analyze indexes: no row can change."""
    steps = [s for m in migrations for s in m.steps]
    return all(isinstance(s, str) and INDEX_ONLY_RE.match(s) for s in steps)


def _rehearse_downs(
    mem: sqlite3.Connection,
    migrations: list[Migration],
    baseline: Shape,
    downs: dict[str, list[Step] | None],
) -> None:
    """Run every down newest first, as a rollback would, and compare with the schema before."""
    for mig in reversed(migrations):
        for stmt in downs[mig.version] or []:
            _run(mem, stmt, mig, "down")
    now = schema_shape(mem)
    differences = sorted(
        f"{(baseline.get(name) or now[name])[0]} {name} "
        + ("is left behind" if name not in baseline else "is gone" if name not in now else "differs")
        for name in baseline.keys() | now.keys()
        if baseline.get(name) != now.get(name)
    )
    if differences:
        labels = ", ".join(m.path.name for m in migrations)
        raise NotReversible(
            f"The down of {labels} does not undo its up",
            f"after the up and the down on a copy of the schema: {'; '.join(differences[:5])}",
            "fix the down section so that it undoes exactly what the up does; nothing was written",
        )


def _run(mem: sqlite3.Connection, stmt: Step, mig: Migration, section: str) -> None:
    try:
        if isinstance(stmt, Rebuild):
            _rebuild(mem, stmt)
        else:
            mem.execute(stmt)
    except (sqlite3.Error, MigrationError) as exc:
        if isinstance(stmt, Rebuild):
            detail = (
                f"rebuild of {stmt.table}: {exc.why or exc.what if isinstance(exc, MigrationError) else exc}"
            )
            stmt = f"-- migrate:rebuild {stmt.table}"
        else:
            detail = failure_detail(exc, stmt)
        if section == "up":
            raise BadInput(
                f"Migration {mig.path.name} fails on this database's schema",
                detail,
                "fix the migration (or the --database path); nothing was written",
            ) from exc
        raise NotReversible(
            f"The down of {mig.path.name} fails after its up",
            f"on a copy of the schema: {detail}",
            "fix the down section (a rollback would stop there); nothing was written",
        ) from exc


def _rebuild(mem: sqlite3.Connection, spec: Rebuild) -> None:
    """A blocking rebuild on the empty copy, in a transaction as it runs for real."""
    mem.execute("BEGIN")
    try:
        blocking.rebuild_blocking(mem, spec)
        mem.execute("COMMIT")
    except BaseException:
        mem.execute("ROLLBACK")
        raise
