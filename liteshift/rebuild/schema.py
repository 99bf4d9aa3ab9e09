"""What a rebuild makes: its object names, the copy plan, its statistics, blocking or online."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from dataclasses import asdict, dataclass

from liteshift.core.config import ONLINE_MIN_ROWS
from liteshift.core.errors import BadInput
from liteshift.core.migrations import CREATE_INDEX_RE, IDENT, Rebuild
from liteshift.core.sql import failure_detail, quote_ident, strip_comments
from liteshift.core.tables import Table, describe, read_table

STATE_TABLE = "liteshift_rebuilds"


STATE_DDL = f"""CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
    id TEXT PRIMARY KEY,
    table_name TEXT NOT NULL,
    phase TEXT NOT NULL,
    target_sql TEXT NOT NULL,
    source_sql TEXT NOT NULL,
    position TEXT,
    started_at REAL NOT NULL,
    prebuilt TEXT NOT NULL DEFAULT '[]'
)"""
# Added after the first layout: the indexes of the batch built on the shadow (JSON [[name, sql]]).
STATE_COLUMNS = {"prebuilt": "TEXT NOT NULL DEFAULT '[]'"}


@dataclass(frozen=True)
class Names:
    """liteshift's own objects for a rebuild of one table: short, fixed and free of quoting trouble."""

    id: str  # the table's tag: sha256 of its lower-cased name, 8 hex digits
    shadow: str  # the new table, filled beside the old one
    changes: str  # the keys the application changed since the copy began
    old: str  # the old table after the cut-over (the revert window's shadow)
    trigger: str  # prefix of the capture triggers
    parents: str  # parent-key changes, for the incremental foreign-key check
    index: str  # prefix of the shadow's temporary index names


def names(table: str) -> Names:
    """The names of liteshift's objects for a rebuild of `table`."""
    tag = hashlib.sha256(table.lower().encode()).hexdigest()[:8]
    return Names(
        id=tag,
        shadow=f"liteshift_new_{tag}",
        changes=f"liteshift_changes_{tag}",
        old=f"liteshift_old_{tag}",
        trigger=f"liteshift_capture_{tag}",
        parents=f"liteshift_parents_{tag}",
        index=f"liteshift_ix_{tag}",
    )


@dataclass(frozen=True)
class Copy:
    """How rows go from the old table to the new one."""

    targets: tuple[str, ...]  # the new table's columns to insert (rowid first when carried)
    sources: tuple[str, ...]  # the SQL expression for each, over the old row
    shadow_key: (
        tuple[str, ...] | None
    )  # the new table's columns equal to the old key; None: online impossible
    dropped: tuple[str, ...]  # old columns the new definition does not have
    target: Table  # the new definition, read from an empty copy

    def select(self, source: Table, where: str = "") -> str:
        return (
            f"SELECT {', '.join(self.sources)} FROM {quote_ident(source.name)}{where} "
            f"ORDER BY {', '.join(quote_ident(k) for k in source.key)}"
        )

    def insert(self, into: str, source: Table, where: str = "") -> str:
        cols = ", ".join(quote_ident(c) for c in self.targets)
        return f"INSERT INTO {quote_ident(into)} ({cols}) {self.select(source, where)}"


def plan_copy(source: Table, spec: Rebuild) -> Copy:
    """Map the new definition's columns to expressions over the old row; BadInput on a bad mapping."""
    target = _target(spec)
    by_lower = {c.lower(): c for c in source.columns}
    exprs = {k.lower(): (k, v) for k, v in spec.expressions.items()}
    generated = {c.lower() for c in target.columns} - {c.lower() for c in target.stored}
    for low, (col, _) in exprs.items():
        if low not in {c.lower() for c in target.columns}:
            raise BadInput(
                f"Rebuild of {source.name}: '-- migrate:columns' names {col!r}",
                "the new definition has no such column",
                "name a column of the target CREATE TABLE",
            )
        if low in generated:
            raise BadInput(
                f"Rebuild of {source.name}: column {col!r} is generated",
                "SQLite computes a generated column; it cannot be given a value",
                "remove its line from '-- migrate:columns'",
            )
    targets: list[str] = []
    sources: list[str] = []
    if not source.without_rowid and not target.without_rowid and target.ipk is None:
        targets.append("rowid")  # a rowid table keeps its rowids: VACUUM-style renumbering loses links
        sources.append(quote_ident(source.key[0]))
    for col in target.stored:
        if col.lower() in exprs:
            targets.append(col)
            sources.append(f"({exprs[col.lower()][1]})")
        elif col.lower() in by_lower:
            targets.append(col)
            sources.append(quote_ident(by_lower[col.lower()]))
    kept = {t.lower() for t in targets}
    dropped = tuple(c for c in source.stored if c.lower() not in {x.lower() for x in target.columns})
    return Copy(tuple(targets), tuple(sources), _shadow_key(source, target, exprs, kept), dropped, target)


def _target(spec: Rebuild) -> Table:
    mem = sqlite3.connect(":memory:", isolation_level=None)
    try:
        mem.execute(spec.create_sql)
        name = mem.execute("SELECT name FROM sqlite_schema WHERE type = 'table'").fetchone()[0]
        return describe(mem, name, spec.create_sql)
    except sqlite3.Error as exc:
        raise BadInput(
            f"The target definition of {spec.table} is not valid SQL",
            failure_detail(exc, spec.create_sql),
            "fix the CREATE TABLE under '-- migrate:rebuild'",
        ) from exc
    finally:
        mem.close()


def _shadow_key(
    source: Table, target: Table, exprs: dict[str, tuple[str, str]], kept: set[str]
) -> tuple[str, ...] | None:
    """The new table's columns that equal the old key, when every row keeps its key unchanged."""
    if not source.without_rowid and not target.without_rowid:
        if target.ipk is None:
            return ("rowid",)
        same = source.ipk is not None and source.ipk.lower() == target.ipk.lower()
        return ("rowid",) if same and target.ipk.lower() not in exprs else None
    if source.without_rowid and target.without_rowid:
        if [k.lower() for k in source.key] != [k.lower() for k in target.key]:
            return None
        if any(k.lower() in exprs or k.lower() not in kept for k in source.key):
            return None
        return target.key
    return None


@dataclass
class RebuildStats:
    """What one rebuild did: for the report."""

    table: str
    mode: str
    rows: int = 0
    batches: int = 0
    backlog_at_cutover: int = 0
    cutover_seconds: float = 0.0
    copy_seconds: float = 0.0
    longest_txn_seconds: float = 0.0
    reconciled: int = 0
    retained: bool = False  # the old copy is kept, fed, for a revert (REVERT_PREFIX state)
    index_build: bool = False  # copied for CREATE INDEX, not for a new definition
    prebuilt_indexes: int = 0  # indexes of the batch built on the shadow, beside the application
    built_in_lock: int = 0  # indexes built inside the migration's write lock at the cut-over
    verified_rows: int = 0  # rows compared with the table before the cut-over (the backlog aside)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def merge_copy_stats(copied: list[RebuildStats], applied: list[RebuildStats]) -> list[RebuildStats]:
    """The migrate step's figures with the earlier copy step's rows, batches and times added."""
    by_table = {c.table: c for c in copied}
    for a in applied:
        c = by_table.get(a.table)
        if c is not None and a.mode == "online":
            a.rows += c.rows
            a.batches += c.batches
            a.copy_seconds += c.copy_seconds
            a.reconciled += c.reconciled
            a.longest_txn_seconds = max(a.longest_txn_seconds, c.longest_txn_seconds)
    return applied


def choose_mode(con: sqlite3.Connection, spec: Rebuild, requested: str) -> str:
    """online or blocking: as requested, else online for a large table whose rows keep their keys."""
    if requested in ("online", "blocking"):
        return requested
    source = read_table(con, spec.table)
    if plan_copy(source, spec).shadow_key is None:
        return "blocking"
    rows = con.execute(f"SELECT count(*) FROM {quote_ident(source.name)}").fetchone()[0]
    return "online" if rows >= ONLINE_MIN_ROWS else "blocking"


def drop_online_objects(con: sqlite3.Connection, table: str) -> None:
    """Remove a rebuild's capture triggers, key table, shadow and state row (inside a transaction)."""
    n = names(table)
    for name in capture_triggers(con, n):
        con.execute(f"DROP TRIGGER {name}")
    con.execute(f"DROP TABLE IF EXISTS {n.changes}")
    con.execute(f"DROP TABLE IF EXISTS {n.parents}")
    con.execute(f"DROP TABLE IF EXISTS {n.shadow}")  # its temporary indexes go with it
    if con.execute(f"SELECT 1 FROM sqlite_schema WHERE name = '{STATE_TABLE}'").fetchone():
        con.execute(
            f"DELETE FROM {STATE_TABLE} WHERE table_name = ? COLLATE NOCASE AND phase != 'drop-old'", (table,)
        )


def capture_triggers(con: sqlite3.Connection, n: Names) -> list[str]:
    prefix = n.trigger + "_"
    rows = con.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
        (len(prefix), prefix),
    )
    return [r[0] for r in rows]


# CREATE INDEX ... ON [main.]table ( : where the table's name stands in an index statement.
ON_TABLE_RE = re.compile(rf"\s+ON\s+(?:main\s*\.\s*)?(?P<table>{IDENT})\s*\(", re.IGNORECASE)


def stored_index_sql(sql: str) -> str:
    """A CREATE INDEX as SQLite keeps it in sqlite_schema, so that an index built online reads
    exactly as one built as written: "CREATE [UNIQUE] INDEX ", then the statement from the index's
    own name to its last token (IF NOT EXISTS and a schema name dropped, the rest as written)."""
    text = sql.strip().rstrip(";").rstrip()
    m = CREATE_INDEX_RE.match(text)
    if m is None:
        return sql
    return f"CREATE {'UNIQUE ' if m.group(1) else ''}INDEX {text[m.start('name') :]}"


def shadow_index_sql(sql: str, temp_name: str, shadow: str) -> str:
    """A CREATE INDEX statement re-aimed at another table (a shadow) under another name."""
    text = strip_comments(sql)
    m = CREATE_INDEX_RE.match(text)
    if m is None or (on := ON_TABLE_RE.search(text, m.end())) is None:
        raise BadInput("Cannot read an index definition", text[:80], "report this index's SQL to liteshift")
    head = text[: m.start("name")] + quote_ident(temp_name)
    return f"{head} ON {quote_ident(shadow)} (" + text[on.end() :]
