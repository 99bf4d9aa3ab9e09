"""Which online rebuilds a batch runs, and which of its CREATE INDEX statements are built on a shadow.

A CREATE INDEX on a large table holds SQLite's write lock for the whole build. Built online, the
table is copied into a shadow that has its indexes and the new one, beside the application, and
the statement becomes the rebuild's short cut-over (docs/rebuild.md, "Online index builds"). An
index created in the same batch as an online rebuild of its table is built on that rebuild's
shadow instead of twice inside the lock (once on the old table, once on the new).

Conservative by design: an index is prebuilt only when nothing else in the batch could see the
difference (no other statement names it, no other schema change touches its table, it can be
created on the shadow's definition); every other one is built as written.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field

from liteshift.core.errors import BadInput
from liteshift.core.migrations import CREATE_INDEX_RE, IDENT, Migration, Rebuild
from liteshift.core.sql import quote_ident, strip_comments, unquote
from liteshift.core.tables import read_table, renamed
from liteshift.rebuild.schema import ON_TABLE_RE, choose_mode, shadow_index_sql

ANALYZE_RE = re.compile(rf"^\s*ANALYZE\s+(?:main\s*\.\s*)?(?P<name>{IDENT})\s*;?\s*$", re.IGNORECASE)
DDL_RE = re.compile(r"^\s*(CREATE|ALTER|DROP|REINDEX)\b", re.IGNORECASE)

Position = tuple[str, int]  # (migration version, index of the step in its up)


@dataclass
class Shadowed:
    """One table copied online: a rebuild, or (spec = its own definition) an index build."""

    version: str  # the migration that owns the state (its cut-over happens in this migration)
    spec: Rebuild
    at: Position  # the step that cuts over
    prebuilt: list[tuple[str, str]] = field(default_factory=list)  # (index name, CREATE INDEX)
    at_statement: bool = False  # an index build: cut over at its CREATE INDEX, not at a rebuild step


@dataclass
class OnlinePlan:
    """The online work of a batch: tables to copy, where each cuts over, statements to skip."""

    tables: list[Shadowed] = field(default_factory=list)
    skipped: set[Position] = field(default_factory=set)  # prebuilt CREATE INDEX, deferred ANALYZE
    # ANALYZE of a prebuilt index written before its table's cut-over: run right after it.
    deferred: dict[Position, list[str]] = field(default_factory=dict)

    def at(self, position: Position) -> Shadowed | None:
        return next((s for s in self.tables if s.at == position), None)


@dataclass(frozen=True)
class NewIndex:
    position: Position
    name: str
    table: str
    sql: str
    if_not_exists: bool


def new_index(stmt: str, position: Position) -> NewIndex | None:
    """The CREATE INDEX statement's name and table, or None for any other statement."""
    text = strip_comments(stmt).strip()
    m = CREATE_INDEX_RE.match(text)
    on = ON_TABLE_RE.search(text, m.end()) if m else None
    if m is None or on is None:
        return None
    return NewIndex(position, unquote(m.group("name")), unquote(on.group("table")), text, bool(m.group(2)))


def plan_online(
    con: sqlite3.Connection, todo: list[Migration], rebuild_mode: str, index_mode: str
) -> OnlinePlan:
    """The online rebuilds of the pending batch, and the indexes prebuilt on their shadows."""
    plan = OnlinePlan()
    order = {(m.version, i): n for n, (m, i) in enumerate((m, i) for m in todo for i in range(len(m.steps)))}
    rebuilds = [(m.version, i, s) for m in todo for i, s in enumerate(m.steps) if isinstance(s, Rebuild)]
    tables = [r.table.lower() for _, _, r in rebuilds]
    for version, i, spec in rebuilds:
        if (
            tables.count(spec.table.lower()) == 1  # a table rebuilt twice in one run: blocking
            and _exists(con, spec.table)
            and choose_mode(con, spec, rebuild_mode) == "online"
        ):
            plan.tables.append(Shadowed(version, spec, (version, i)))
    if index_mode == "blocking":
        return plan
    statements = [(m.version, i, s) for m in todo for i, s in enumerate(m.steps) if isinstance(s, str)]
    found = [ix for v, i, s in statements if (ix := new_index(s, (v, i))) is not None]
    for table in sorted({ix.table.lower() for ix in found}):
        mine = [ix for ix in found if ix.table.lower() == table]
        if _other_ddl(table, [ix.position for ix in mine], statements):
            continue
        rebuilt = next((s for s in plan.tables if s.spec.table.lower() == table), None)
        if rebuilt is None and table in tables:
            continue  # rebuilt blocking in this batch: its indexes are built with it
        if not _exists(con, mine[0].table):
            continue
        target = rebuilt.spec.create_sql if rebuilt else read_table(con, mine[0].table).sql
        cutover = order[rebuilt.at] if rebuilt else order[mine[0].position]
        ready = [
            ix for ix in mine if _prebuildable(con, ix, statements, order, cutover) and _fits(target, ix)
        ]
        if rebuilt is None:
            # Every index of the table, or none: one built as written before the cut-over would
            # be built again inside the lock, on the new table.
            if len(ready) < len(mine):
                continue
            spec = Rebuild(read_table(con, mine[0].table).name, target)
            if choose_mode(con, spec, index_mode) != "online":
                continue
            rebuilt = Shadowed(mine[0].position[0], spec, mine[0].position, at_statement=True)
            plan.tables.append(rebuilt)
        rebuilt.prebuilt += [(ix.name, ix.sql) for ix in ready]
        plan.skipped |= {ix.position for ix in ready}
        _defer_analyze(plan, rebuilt.at, {ix.name.lower() for ix in ready}, statements, order)
    return plan


def _defer_analyze(
    plan: OnlinePlan,
    cutover: Position,
    prebuilt: set[str],
    statements: list[tuple[str, int, str]],
    order: dict[Position, int],
) -> None:
    """ANALYZE of a prebuilt index before the cut-over would find no index: it runs after it."""
    for v, i, s in statements:
        m = ANALYZE_RE.match(strip_comments(s))
        if m and unquote(m.group("name")).lower() in prebuilt and order[(v, i)] < order[cutover]:
            plan.skipped.add((v, i))
            plan.deferred.setdefault(cutover, []).append(s)


def _exists(con: sqlite3.Connection, table: str) -> bool:
    row = con.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE", (table,)
    )
    return row.fetchone() is not None


def _prebuildable(
    con: sqlite3.Connection,
    ix: NewIndex,
    statements: list[tuple[str, int, str]],
    order: dict[Position, int],
    cutover: int,
) -> bool:
    """The table is not a virtual one, the index does not exist yet, and every other statement
    of the batch that names the index runs after both the cut-over and the index's own statement
    (from there on it exists either way)."""
    row = con.execute(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE", (ix.table,)
    ).fetchone()
    if row is None or re.match(r"\s*CREATE\s+VIRTUAL\b", row[0] or "", re.IGNORECASE):
        return False
    if con.execute("SELECT 1 FROM sqlite_schema WHERE name = ? COLLATE NOCASE", (ix.name,)).fetchone():
        return False
    word = re.compile(rf"(?<![\w$]){re.escape(ix.name)}(?![\w$])", re.IGNORECASE)
    after = max(cutover, order[ix.position])  # from here on, as written or prebuilt, it exists
    return all(
        order[(v, i)] > after or _analyzes(s, ix.name)  # an ANALYZE of it is moved after the cut-over
        for v, i, s in statements
        if (v, i) != ix.position and word.search(strip_comments(s))
    )


def _analyzes(stmt: str, index: str) -> bool:
    m = ANALYZE_RE.match(strip_comments(stmt))
    return m is not None and unquote(m.group("name")).lower() == index.lower()


def _other_ddl(table: str, own: list[Position], statements: list[tuple[str, int, str]]) -> bool:
    """Another schema change of the batch names the table: the shadow might not be what it expects."""
    word = re.compile(rf"(?<![\w$]){re.escape(table)}(?![\w$])", re.IGNORECASE)
    return any(
        DDL_RE.match(strip_comments(s)) and word.search(strip_comments(s)) and (v, i) not in own
        for v, i, s in statements
    )


def _fits(create_sql: str, ix: NewIndex) -> bool:
    """The index can be created on a table of this definition (a scratch in-memory copy)."""
    scratch = sqlite3.connect(":memory:")
    try:
        scratch.execute(renamed(create_sql, "t"))
        scratch.execute(shadow_index_sql(ix.sql, "i", "t"))
        return True
    except (sqlite3.Error, BadInput):
        return False
    finally:
        scratch.close()


def duplicate_keys(con: sqlite3.Connection, table: str, create_index_sql: str) -> str | None:
    """For a UNIQUE index, the first keys the table's rows already share, as a sentence; None when
    there are none, or for an index that is not unique."""
    text = strip_comments(create_index_sql).strip()
    if not re.match(r"CREATE\s+UNIQUE\b", text, re.IGNORECASE):
        return None
    on = ON_TABLE_RE.search(text)
    if on is None:
        return None
    terms, rest = _terms(text, on.end() - 1)
    partial = re.match(r"\s*WHERE\s+(?P<cond>.+?)\s*;?\s*$", rest, re.IGNORECASE | re.DOTALL)
    keys = [re.sub(r"\s+(ASC|DESC)\s*$", "", t, flags=re.IGNORECASE) for t in terms]
    where = [f"({k}) IS NOT NULL" for k in keys] + ([f"({partial.group('cond')})"] if partial else [])
    rows = con.execute(
        f"SELECT {', '.join(keys)}, count(*) FROM {quote_ident(table)} WHERE {' AND '.join(where)} "
        f"GROUP BY {', '.join(keys)} HAVING count(*) > 1 LIMIT 3"
    ).fetchall()
    if not rows:
        return None
    shown = "; ".join(
        f"{r[-1]} rows have ({', '.join(keys)}) = ({', '.join(map(repr, r[:-1]))})" for r in rows
    )
    return shown + (" and more" if len(rows) == 3 else "")


def _terms(text: str, open_at: int) -> tuple[list[str], str]:
    """The comma-separated terms inside the parenthesis that opens at open_at, and the text after."""
    depth, start, terms, quote = 0, open_at + 1, [], ""
    for i in range(open_at, len(text)):
        ch = text[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                terms.append(text[start:i].strip())
                return terms, text[i + 1 :]
        elif ch == "," and depth == 1:
            terms.append(text[start:i].strip())
            start = i + 1
    raise ValueError(f"unbalanced parentheses in {text[:80]!r}")
