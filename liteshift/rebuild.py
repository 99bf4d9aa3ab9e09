"""Table rebuilds: the changes ALTER TABLE cannot make, in SQLite's own order, blocking or online.

Blocking: inside the migration's one transaction, the new table is created under a shadow name,
filled, the old one dropped, the new one renamed, and the table's indexes, triggers and the views
and triggers elsewhere that name it are put back (lang_altertable.html, "other kinds of table
schema changes"). Online: the shadow table and its indexes are created and filled beforehand in
short transactions while capture triggers record the keys the application changes; the
migration's transaction then only drains that backlog and swaps the tables and index names.

The caller owns the connection and sets `PRAGMA foreign_keys = OFF` outside any transaction
(`foreign_keys_off`): with it on, dropping a parent table deletes or nulls its children.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from liteshift import faults, tracking
from liteshift.constraints import table_constraints, without_foreign_keys
from liteshift.db import Held, connection, relaxed_sync, write_transaction
from liteshift.errors import BadInput, CheckFailed
from liteshift.migrations import CREATE_INDEX_RE, CREATE_TABLE_RE, Rebuild
from liteshift.sql import failure_detail, quote_ident, strip_comments

STATE_TABLE = "liteshift_rebuilds"
STATE_DDL = f"""CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
    id TEXT PRIMARY KEY,
    table_name TEXT NOT NULL,
    phase TEXT NOT NULL,
    target_sql TEXT NOT NULL,
    source_sql TEXT NOT NULL,
    position TEXT,
    started_at REAL NOT NULL
)"""
ROWID_NAMES = ("rowid", "_rowid_", "oid")
OPTIONS_RE = re.compile(r"\)\s*([^()]*)$")
AUTOINCREMENT_RE = re.compile(r"\bAUTOINCREMENT\b", re.IGNORECASE)
ONLINE_MIN_ROWS = 100_000  # below this, the whole rebuild takes less than a blocking CREATE INDEX


def names(table: str) -> dict[str, str]:
    """liteshift's own objects for a rebuild of `table`: short, fixed and free of quoting trouble."""
    tag = hashlib.sha256(table.lower().encode()).hexdigest()[:8]
    return {
        "shadow": f"liteshift_new_{tag}",
        "changes": f"liteshift_changes_{tag}",
        "old": f"liteshift_old_{tag}",
        "trigger": f"liteshift_capture_{tag}",
        "parents": f"liteshift_parents_{tag}",
        "index": f"liteshift_ix_{tag}",
        "id": tag,
    }


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
    return _describe(con, name, sql)


def _describe(con: sqlite3.Connection, name: str, sql: str) -> Table:
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
        return _describe(mem, name, spec.create_sql)
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


# ---------------------------------------------------------------------------------------------
# Blocking: everything inside the caller's transaction.


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

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def rebuild_blocking(con: sqlite3.Connection, spec: Rebuild) -> RebuildStats:
    """The whole rebuild inside the caller's open transaction (foreign_keys already off)."""
    start = time.perf_counter()
    source = read_table(con, spec.table)
    copy = plan_copy(source, spec)
    shadow = names(source.name)["shadow"]
    _drop_online_objects(con, source.name)  # an online attempt that was given up
    _execute(con, renamed(spec.create_sql, shadow), source)
    rows = _execute(con, copy.insert(shadow, source), source).rowcount
    for kind, name, _ in source.dependents:
        con.execute(f"DROP {kind.upper()} {quote_ident(name)}")
    _execute(con, f"DROP TABLE {quote_ident(source.name)}", source)
    _execute(con, f"ALTER TABLE {quote_ident(shadow)} RENAME TO {quote_ident(source.name)}", source)
    for _, sql in source.indexes:
        _execute(con, sql, source)
    _restore_around(con, source, copy, dependents=True)
    seconds = time.perf_counter() - start
    return RebuildStats(source.name, "blocking", rows, 1, 0, seconds, seconds, seconds)


def _execute(
    con: sqlite3.Connection, sql: str, source: Table, params: tuple[object, ...] = ()
) -> sqlite3.Cursor:
    try:
        return con.execute(sql, params)
    except sqlite3.Error as exc:
        raise CheckFailed(
            f"The rebuild of {source.name} failed",
            failure_detail(exc, sql),
            "nothing was changed (the transaction was rolled back); fix the data or the migration "
            "and run again",
        ) from exc


def _restore_around(
    con: sqlite3.Connection,
    source: Table,
    copy: Copy,
    dependents: bool,
    fk_check: Callable[[], None] | None = None,
) -> None:
    """Triggers (and views and other triggers, when dropped) back; the AUTOINCREMENT sequence
    carried; the whole schema re-parsed; foreign keys checked. `source` is read in this transaction."""
    for _, sql in source.triggers:
        _execute(con, sql, source)
    for _, _, sql in source.dependents if dependents else ():
        _execute(con, sql, source)
    if source.sequence is not None and AUTOINCREMENT_RE.search(strip_comments(copy.target.sql)):
        updated = con.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (source.sequence, source.name)
        ).rowcount
        if not updated:
            con.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (source.name, source.sequence)
            )
    reparse_schema(con, source.name)
    (fk_check or (lambda: check_foreign_keys(con, source.name)))()


def reparse_schema(con: sqlite3.Connection, table: str) -> None:
    """Make SQLite re-parse every view and trigger (a rename does): one naming a gone column fails."""
    probe = "liteshift_probe"
    con.execute("PRAGMA legacy_alter_table = OFF")
    con.execute(f"CREATE TABLE {probe} (x)")
    try:
        con.execute(f"ALTER TABLE {probe} RENAME TO {probe}_ok")
    except sqlite3.Error as exc:
        raise CheckFailed(
            f"The rebuild of {table} breaks the schema",
            str(exc),
            "a view or trigger names what the new definition removes: change it in the same "
            "migration (drop and recreate it under '-- migrate:up'); nothing was changed",
        ) from exc
    con.execute(f"DROP TABLE {probe}_ok")


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
        _fk_failure(table, [(r[0], f"rowid {r[1]}", r[2]) for r in rows])


def _fk_failure(table: str, rows: list[tuple[str, str, str]], hint: str = "") -> None:
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


# ---------------------------------------------------------------------------------------------
# Online: shadow table, capture triggers, batched copy, then a short cut-over.


@dataclass
class Throttle:
    """Batch size steered towards a per-transaction budget, with a pause after each batch.

    What a writer of the application feels is how long liteshift holds the write lock: each batch
    is sized so that it holds it about `budget_s`, then pauses as long as it held it. Waiting for
    the lock means the application is writing: liteshift then pauses longer, but its batches do
    not shrink (a smaller batch would hold the lock as often, for less work).
    """

    budget_s: float = 0.02
    rows: int = 2000
    min_rows: int = 100
    max_rows: int = 50_000
    pause_ratio: float = 1.0  # sleep this x the transaction's length, so writers get their turn
    converge_s: float = 30.0  # longest time spent shrinking the backlog before the cut-over
    cache_mib: int = 256  # page cache of the copying connection
    cutover_backlog: int = 100  # reconcile until at most this many keys are left for the cut-over

    def after(self, txn: Held) -> None:
        """Resize from the batch's own work (a COMMIT's sync does not shrink with the batch) and
        pause as long as the lock was held, plus up to one budget when writers kept us waiting."""
        held_s, waited_s = txn.held, txn.waited
        scale = min(2.0, max(0.5, self.budget_s / max(txn.work, 1e-4)))
        self.rows = min(self.max_rows, max(self.min_rows, int(self.rows * scale)))
        time.sleep(min(0.5, held_s * self.pause_ratio + min(waited_s, self.budget_s)))


@dataclass
class Online:
    """One online rebuild in progress: what it needs to go on after a crash."""

    spec: Rebuild
    version: str
    source: Table
    copy: Copy
    stats: RebuildStats
    position: list[object] | None = None  # the last key copied; None: not started
    phase: str = "copy"
    fks: list[ForeignKey] | None = None  # None: the cut-over runs the full foreign_key_check
    parents_seq: int | None = None  # parent changes up to here were seen by the last full check
    unchecked: set[tuple[object, ...]] = field(default_factory=set)  # keys reconciled since

    @property
    def id(self) -> str:
        return f"{self.version}:{names(self.source.name)['id']}"


def _changes_ddl(n: dict[str, str], source: Table) -> list[str]:
    keys = ", ".join(f"k{i}" for i in range(len(source.key)))
    t = quote_ident(source.name)

    def record(prefix: str) -> str:
        vals = ", ".join(f"{prefix}.{quote_ident(k)}" for k in source.key)
        return f"INSERT INTO {n['changes']} ({keys}) VALUES ({vals});"

    ddl = [
        f"CREATE TABLE {n['changes']} (seq INTEGER PRIMARY KEY, {keys})",
        f"CREATE TRIGGER {n['trigger']}_i AFTER INSERT ON {t} BEGIN {record('NEW')} END",
        f"CREATE TRIGGER {n['trigger']}_u AFTER UPDATE ON {t} BEGIN {record('OLD')} {record('NEW')} END",
        f"CREATE TRIGGER {n['trigger']}_d AFTER DELETE ON {t} BEGIN {record('OLD')} END",
    ]
    # INSERT OR REPLACE deletes a row through a UNIQUE conflict without firing a DELETE trigger
    # (unless recursive_triggers is on): record the rows such a write is about to replace.
    conflicts = " ".join(
        f"INSERT INTO {n['changes']} ({keys}) SELECT {', '.join(quote_ident(k) for k in source.key)} "
        f"FROM {t} WHERE " + " AND ".join(f"{quote_ident(c)} = NEW.{quote_ident(c)}" for c in cols) + ";"
        for cols in source.unique_sets
    )
    if conflicts:
        ddl += [
            f"CREATE TRIGGER {n['trigger']}_bi BEFORE INSERT ON {t} BEGIN {conflicts} END",
            f"CREATE TRIGGER {n['trigger']}_bu BEFORE UPDATE ON {t} BEGIN {conflicts} END",
        ]
    return ddl


def _parents_ddl(n: dict[str, str], fks: list[ForeignKey]) -> list[str]:
    """Record the parent keys the application deletes or changes during the copy, per foreign key,
    so the cut-over checks only the rows that pointed at them instead of the whole table."""
    if not fks:
        return []
    width = max(len(fk.columns) for fk in fks)
    values = ", ".join(f"v{i}" for i in range(width))
    ddl = [f"CREATE TABLE {n['parents']} (seq INTEGER PRIMARY KEY, fk INTEGER, {values})"]
    for k, fk in enumerate(fks):
        cols = ", ".join(f"v{i}" for i in range(len(fk.columns)))
        old = ", ".join(f"OLD.{quote_ident(c)}" for c in fk.parent_columns)
        changed = " OR ".join(f"OLD.{quote_ident(c)} IS NOT NEW.{quote_ident(c)}" for c in fk.parent_columns)
        record = f"INSERT INTO {n['parents']} (fk, {cols}) VALUES ({k}, {old});"
        parent = quote_ident(fk.parent)
        ddl += [
            f"CREATE TRIGGER {n['trigger']}_p{k}d AFTER DELETE ON {parent} BEGIN {record} END",
            f"CREATE TRIGGER {n['trigger']}_p{k}u AFTER UPDATE ON {parent} WHEN {changed} BEGIN {record} END",
        ]
    return ddl


def _shadow_index_sql(sql: str, temp_name: str, shadow: str) -> str:
    """A CREATE INDEX statement re-aimed at the shadow table under a temporary name."""
    text = strip_comments(sql)
    m = CREATE_INDEX_RE.match(text)
    on = re.compile(r"\s+ON\s+(?:\"(?:[^\"]|\"\")+\"|`(?:[^`]|``)+`|\[[^\]]+\]|[\w$]+)\s*\(", re.I)
    if m is None or (o := on.search(text, m.end())) is None:
        raise BadInput("Cannot read an index definition", text[:80], "report this index's SQL to liteshift")
    return text[: m.start("name")] + quote_ident(temp_name) + f" ON {quote_ident(shadow)} (" + text[o.end() :]


def start_online(con: sqlite3.Connection, spec: Rebuild, version: str, path: str, timeout_ms: int) -> Online:
    """Create (or find, after a crash) the shadow table, its indexes and the capture triggers."""
    with write_transaction(con, path, timeout_ms):
        con.execute(STATE_DDL)
        source = read_table(con, spec.table)
        copy = plan_copy(source, spec)
        if copy.shadow_key is None:
            raise BadInput(
                f"The rebuild of {source.name} cannot run online",
                "the new definition does not keep each row's key (rowid or primary key) unchanged, "
                "so changed rows could not be matched",
                "use --rebuild-mode blocking",
            )
        n = names(source.name)
        state = Online(spec, version, source, copy, RebuildStats(source.name, "online"))
        state.fks = foreign_keys(con, spec.create_sql)
        row = con.execute(
            f"SELECT phase, target_sql, source_sql, position FROM {STATE_TABLE} WHERE id = ?", (state.id,)
        ).fetchone()
        if row and row[1] == spec.create_sql and row[2] == source.sql:
            state.phase, state.position = row[0], json.loads(row[3]) if row[3] else None
            return state  # resume where the killed run stopped
        _drop_online_objects(con, source.name)
        # Without its foreign keys until the cut-over: the application's parent deletes must not
        # be checked against (or cascade into) rows the migration has not committed yet.
        con.execute(renamed(without_foreign_keys(spec.create_sql), n["shadow"]))
        for i, (_, sql) in enumerate(source.indexes):
            con.execute(_shadow_index_sql(sql, f"{n['index']}_{i}", n["shadow"]))
        for ddl in _changes_ddl(n, source) + _parents_ddl(n, state.fks or []):
            con.execute(ddl)
        con.execute(
            f"INSERT INTO {STATE_TABLE} (id, table_name, phase, target_sql, source_sql, started_at) "
            "VALUES (?, ?, 'copy', ?, ?, ?)",
            (state.id, source.name, spec.create_sql, source.sql, time.time()),
        )
        faults.point("rebuild-preparing")
    faults.point("rebuild-prepared")
    return state


def _drop_online_objects(con: sqlite3.Connection, table: str) -> None:
    """Remove a rebuild's capture triggers, key table, shadow and state row (inside a transaction)."""
    n = names(table)
    for name in _capture_triggers(con, n):
        con.execute(f"DROP TRIGGER {name}")
    con.execute(f"DROP TABLE IF EXISTS {n['changes']}")
    con.execute(f"DROP TABLE IF EXISTS {n['parents']}")
    con.execute(f"DROP TABLE IF EXISTS {n['shadow']}")  # its temporary indexes go with it
    if con.execute(f"SELECT 1 FROM sqlite_schema WHERE name = '{STATE_TABLE}'").fetchone():
        con.execute(
            f"DELETE FROM {STATE_TABLE} WHERE table_name = ? COLLATE NOCASE AND phase != 'drop-old'", (table,)
        )


def _capture_triggers(con: sqlite3.Connection, n: dict[str, str]) -> list[str]:
    prefix = n["trigger"] + "_"
    rows = con.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
        (len(prefix), prefix),
    )
    return [r[0] for r in rows]


def _key_where(key: tuple[str, ...], op: str, count: int = 1) -> str:
    cols = ", ".join(quote_ident(k) for k in key)
    marks = ", ".join("?" for _ in key)
    if count == 1:
        return f"({cols}) {op} ({marks})"
    return f"({cols}) IN (VALUES {', '.join(f'({marks})' for _ in range(count))})"


def _reconcile(con: sqlite3.Connection, state: Online, limit: int | None, copied_only: bool) -> int:
    """Bring the shadow's rows for the recorded keys up to date; return the backlog rows consumed.

    copied_only: during the copy, keys past the position are only forgotten, as the range copy
    will read those rows as they are then.
    """
    n = names(state.source.name)
    ks = [f"k{i}" for i in range(len(state.source.key))]
    # The last seq of the oldest `limit` recorded changes (all of them without a limit).
    last = con.execute(
        f"SELECT max(seq) FROM (SELECT seq FROM {n['changes']} ORDER BY seq LIMIT ?)", (limit or -1,)
    ).fetchone()[0]
    if last is None:
        return 0
    where = f"seq <= {int(last)}"
    if copied_only:
        if state.position is None:
            where += " AND 0"
        else:
            where += f" AND ({', '.join(ks)}) <= ({', '.join('?' for _ in ks)})"
    params = tuple(state.position or ()) if copied_only and state.position is not None else ()
    keys = con.execute(
        f"SELECT DISTINCT {', '.join(ks)} FROM {n['changes']} WHERE {where}", params
    ).fetchall()
    shadow_key = state.copy.shadow_key or state.source.key
    for chunk in (keys[i : i + 200] for i in range(0, len(keys), 200)):
        flat = tuple(v for k in chunk for v in k)
        con.execute(
            f"DELETE FROM {quote_ident(n['shadow'])} WHERE {_key_where(shadow_key, 'IN', len(chunk))}", flat
        )
        _execute(
            con,
            state.copy.insert(
                n["shadow"], state.source, f" WHERE {_key_where(state.source.key, 'IN', len(chunk))}"
            ),
            state.source,
            flat,
        )
    consumed = con.execute(f"DELETE FROM {n['changes']} WHERE seq <= ?", (last,)).rowcount
    state.stats.reconciled += len(keys)
    state.unchecked.update(tuple(k) for k in keys)
    return int(consumed)


def copy_online(
    con: sqlite3.Connection,
    state: Online,
    path: str,
    timeout_ms: int,
    throttle: Throttle | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> RebuildStats:
    """Copy by key range, each batch with the backlog before it in one short transaction; then
    reconcile until the backlog is small, and check the copied rows' foreign keys. Each
    transaction records the position it reached, so a killed copy resumes there."""
    throttle = throttle or Throttle()
    cache = con.execute("PRAGMA cache_size").fetchone()[0]
    # The prebuilt indexes take the rows in key order of the table, at random places of their
    # own: a larger page cache keeps more of them in memory (measured: -22% copy time at 300K rows).
    con.execute(f"PRAGMA cache_size = {-1024 * throttle.cache_mib}")
    try:
        with relaxed_sync(con):
            return _copy_online(con, state, path, timeout_ms, throttle, on_progress)
    finally:
        con.execute(f"PRAGMA cache_size = {int(cache)}")


def _copy_online(
    con: sqlite3.Connection,
    state: Online,
    path: str,
    timeout_ms: int,
    throttle: Throttle,
    on_progress: Callable[[float], None] | None,
) -> RebuildStats:
    n = names(state.source.name)
    src, key = state.source, state.source.key
    total = max(1, con.execute(f"SELECT count(*) FROM {quote_ident(src.name)}").fetchone()[0])
    start = time.perf_counter()
    while state.phase == "copy":
        with write_transaction(con, path, timeout_ms) as txn:
            # Reconcile first, so the shadow matches the source up to the position: the range
            # copied next cannot then meet a stale row on a UNIQUE constraint.
            while _reconcile(con, state, throttle.rows, True) >= throttle.rows:
                pass
            where = f" WHERE {_key_where(key, '>')}" if state.position is not None else ""
            params = tuple(state.position or ())
            bound = con.execute(
                f"SELECT {', '.join(quote_ident(k) for k in key)} FROM {quote_ident(src.name)}{where} "
                f"ORDER BY {', '.join(quote_ident(k) for k in key)} LIMIT 1 OFFSET {throttle.rows - 1}",
                params,
            ).fetchone()
            upper = f"{_key_where(key, '<=')}" if bound else ""
            clause = " AND ".join(c for c in (where.removeprefix(" WHERE "), upper) if c)
            copied = _execute(
                con,
                state.copy.insert(n["shadow"], src, f" WHERE {clause}" if clause else ""),
                src,
                params + (tuple(bound) if bound else ()),
            ).rowcount
            if bound:
                state.position = list(bound)
            else:
                top = con.execute(
                    f"SELECT {', '.join(quote_ident(k) for k in key)} FROM {quote_ident(src.name)} "
                    f"ORDER BY {', '.join(quote_ident(k) + ' DESC' for k in key)} LIMIT 1"
                ).fetchone()
                state.position = list(top) if top else (state.position or [])
                state.phase = "reconcile"
            con.execute(
                f"UPDATE {STATE_TABLE} SET phase = ?, position = ? WHERE id = ?",
                (state.phase, json.dumps(state.position), state.id),
            )
            faults.point("rebuild-copy-batch")
        state.stats.rows += copied
        state.stats.batches += 1
        state.stats.longest_txn_seconds = max(state.stats.longest_txn_seconds, txn.held)
        if on_progress:
            on_progress(min(1.0, state.stats.rows / total))
        throttle.after(txn)
    _converge(con, state, path, timeout_ms, throttle)
    precheck_foreign_keys(con, state)
    # The writes made during the pre-check (1.9 s at 10M rows) would otherwise all wait for the
    # cut-over: reconcile once more, so the lock drains only the last few keys. Those are
    # checked incrementally at the cut-over, like every key reconciled after the pre-check.
    _converge(con, state, path, timeout_ms, throttle)
    state.stats.copy_seconds = time.perf_counter() - start
    return state.stats


def _converge(con: sqlite3.Connection, state: Online, path: str, timeout_ms: int, throttle: Throttle) -> None:
    """Reconcile until the backlog is small enough for the cut-over to drain at once; a writer
    faster than the reconcile is not chased for ever: the cut-over then drains what is left."""
    n = names(state.source.name)
    deadline = time.perf_counter() + throttle.converge_s
    while True:
        with write_transaction(con, path, timeout_ms) as txn:
            _reconcile(con, state, throttle.rows, False)
            faults.point("rebuild-reconcile")
        state.stats.longest_txn_seconds = max(state.stats.longest_txn_seconds, txn.held)
        backlog = con.execute(f"SELECT count(*) FROM {n['changes']}").fetchone()[0]
        # The cut-over drains what is left inside the lock: at 10M rows the 10:53 bench left
        # 2,754 keys (a batch's worth), which took most of its 225 ms cut-over.
        if backlog <= throttle.cutover_backlog or time.perf_counter() > deadline:
            return
        throttle.after(txn)


def precheck_foreign_keys(con: sqlite3.Connection, state: Online) -> None:
    """Check the copied rows' foreign keys in one read snapshot, outside the write lock, and note
    up to where the parent changes were seen: the cut-over then checks only what changed since."""
    if state.fks is None:
        return
    n = names(state.source.name)
    key = state.copy.shadow_key or state.source.key
    con.execute("BEGIN")  # deferred: a read snapshot, no lock that stops a writer (WAL)
    try:
        for fk in state.fks:
            bad = con.execute(fk.violations(con, n["shadow"], key)).fetchall()
            _fk_failure(
                state.source.name,
                [(state.source.name, _key_text(key, r), fk.parent) for r in bad],
                "nothing was swapped; fix those rows (or their parents) and run again",
            )
        top = con.execute(f"SELECT max(seq) FROM {n['parents']}").fetchone()[0] if state.fks else 0
        state.parents_seq, state.unchecked = int(top or 0), set()
    finally:
        con.execute("COMMIT")


def _key_text(key: tuple[str, ...], values: tuple[object, ...]) -> str:
    if len(key) == 1:
        return f"{key[0]} {values[0]!r}"
    return f"({', '.join(key)}) = {values!r}"


def _incremental_fk_check(con: sqlite3.Connection, state: Online, table: str) -> None:
    """After the swap: the rows reconciled since the pre-check, the rows that pointed at parents
    deleted or changed since, then (in full) the tables that reference this one."""
    n = names(state.source.name)
    expected = 2 * len(state.fks or [])
    if (
        state.fks is None
        or state.parents_seq is None
        or len([t for t in _capture_triggers(con, n) if "_p" in t[len(n["trigger"]) :]]) < expected
    ):
        check_foreign_keys(con, table)
        return
    key = state.copy.shadow_key or state.source.key
    bad: list[tuple[str, str, str]] = []
    keys = list(state.unchecked)
    for fk in state.fks:
        for chunk in (keys[i : i + 200] for i in range(0, len(keys), 200)):
            where = f" AND {_key_where(key, 'IN', len(chunk))}"
            rows = con.execute(
                fk.violations(con, table, key, where), tuple(v for k in chunk for v in k)
            ).fetchall()
            bad += [(table, _key_text(key, r), fk.parent) for r in rows]
    if state.fks:
        width = max(len(fk.columns) for fk in state.fks)
        cols = ", ".join(f"v{i}" for i in range(width))
        for k, *values in con.execute(
            f"SELECT DISTINCT fk, {cols} FROM {n['parents']} WHERE seq > ?", (state.parents_seq,)
        ).fetchall():
            fk = state.fks[k]
            where = "".join(f" AND c.{quote_ident(c)} = ?" for c in fk.columns)
            rows = con.execute(
                fk.violations(con, table, key, where), tuple(values[: len(fk.columns)])
            ).fetchall()
            bad += [(table, _key_text(key, r), fk.parent) for r in rows]
    _fk_failure(state.source.name, bad[:6])
    check_foreign_keys(con, table, itself=False)


def cut_over(con: sqlite3.Connection, state: Online, retain_back: Rebuild | None = None) -> RebuildStats:
    """Inside the migration's transaction: drain, check, swap tables and index names, restore.

    retain_back: the rebuild that would undo this one; the old copy is then kept as its shadow,
    already filled, and fed by capture triggers on the new table (see _retain_old) instead of
    being dropped, so that a rollback only replays what changed since and cuts over again.
    """
    start = time.perf_counter()
    n = names(state.source.name)
    state.stats.backlog_at_cutover = con.execute(f"SELECT count(*) FROM {n['changes']}").fetchone()[0]
    while _reconcile(con, state, None, False):
        pass
    capture = {f"{n['trigger']}_{s}" for s in ("i", "u", "d", "bi", "bu")}
    now = read_table(con, state.spec.table)
    same = (
        now.sql == state.source.sql
        and now.triggers == state.source.triggers
        and now.dependents == state.source.dependents
    )
    if not same:
        raise CheckFailed(
            f"The schema of {now.name} changed during its online rebuild",
            "its definition, triggers, or the views and triggers naming it are not what they were "
            "when the copy started",
            "run again: liteshift starts the copy over from the new schema; nothing was swapped",
        )
    faults.point("rebuild-cutover-drained")
    for name in capture:
        con.execute(f"DROP TRIGGER IF EXISTS {name}")
    for name, _ in state.source.triggers:
        con.execute(f"DROP TRIGGER {quote_ident(name)}")
    con.execute(f"DROP TABLE {n['changes']}")
    # legacy_alter_table ON (with foreign_keys off): the renames rewrite no other table's
    # REFERENCES, view or trigger; the schema is re-parsed explicitly below instead.
    con.execute("PRAGMA legacy_alter_table = ON")
    con.execute(f"ALTER TABLE {quote_ident(now.name)} RENAME TO {n['old']}")
    con.execute(f"ALTER TABLE {n['shadow']} RENAME TO {quote_ident(now.name)}")
    prepared = list(state.source.indexes)
    prebuilt = {index: f"{n['index']}_{i}" for i, index in enumerate(prepared)}
    indexes = [(name, sql, prebuilt.get((name, sql))) for name, sql in now.indexes]
    _swap_schema_rows(con, n, indexes, (now.name, renamed(state.spec.create_sql, now.name)))
    for index in prepared:
        if index not in now.indexes:  # dropped by this migration's earlier statements
            con.execute(f"DROP INDEX {prebuilt[index]}")
    for index in now.indexes:
        if index not in prebuilt:  # created by this migration's earlier statements: build it now
            _execute(con, index[1], now)
    con.execute(
        f"UPDATE {STATE_TABLE} SET phase = 'drop-old', table_name = ?, position = NULL WHERE id = ?",
        (n["old"], state.id),
    )
    _restore_around(
        con, now, state.copy, dependents=False, fk_check=lambda: _incremental_fk_check(con, state, now.name)
    )
    for name in _capture_triggers(con, n):  # the parents' ones, kept for the check above
        con.execute(f"DROP TRIGGER {name}")
    con.execute(f"DROP TABLE IF EXISTS {n['parents']}")
    if retain_back is not None:
        state.stats.retained = _retain_old(
            con, state, n, [(name, sql) for name, sql, _ in indexes], retain_back
        )
    faults.point("rebuild-cutover-swapped")
    state.stats.cutover_seconds = time.perf_counter() - start
    return state.stats


def _swap_schema_rows(
    con: sqlite3.Connection,
    n: dict[str, str],
    indexes: list[tuple[str, str, str | None]],
    table: tuple[str, str],
) -> None:
    """Free the old table's index names and give them to the shadow's prebuilt indexes; give the
    new table (name, sql) its full definition, foreign keys included, back.

    `indexes`: (name, sql, prebuilt index or None) of each index the old table has now. SQLite
    cannot rename an index, and building them here would make the cut-over as long as a blocking
    rebuild: sqlite_schema's name and sql are rewritten in the open transaction, the b-trees are
    untouched (foreign keys do not change how a row is stored; the old copy loses its own), the
    schema cookie is bumped so every connection reloads, and this one reloads at once. An index
    without a prebuilt copy is built by the caller under its freed name.
    """
    cookie = con.execute("PRAGMA schema_version").fetchone()[0]
    con.execute("PRAGMA writable_schema = ON")
    try:
        for j, (name, sql, prebuilt) in enumerate(indexes):
            spare = f"{n['old']}_ix_{j}"
            con.execute(
                "UPDATE sqlite_schema SET name = ?, sql = ? WHERE type = 'index' AND name = ?",
                (spare, _shadow_index_sql(sql, spare, n["old"]), name),
            )
            if prebuilt is not None:
                con.execute(
                    "UPDATE sqlite_schema SET name = ?, sql = ? WHERE type = 'index' AND name = ?",
                    (name, sql, prebuilt),
                )
        con.execute(
            "UPDATE sqlite_schema SET sql = ? WHERE type = 'table' AND name = ?", (table[1], table[0])
        )
        # The old copy keeps its rows until it is emptied in batches after the COMMIT (minutes at
        # 10M rows): without its foreign keys, so that an application with foreign_keys on can
        # still delete a parent whose children it deleted from the live table.
        old_sql = con.execute("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (n["old"],))
        row = old_sql.fetchone()
        if row is not None:
            con.execute(
                "UPDATE sqlite_schema SET sql = ? WHERE type = 'table' AND name = ?",
                (without_foreign_keys(row[0]), n["old"]),
            )
        con.execute(f"PRAGMA schema_version = {int(cookie) + 1}")
    finally:
        con.execute("PRAGMA writable_schema = RESET")


REVERT_PREFIX = "undo-"  # state ids of rebuilds back: "undo-VERSION:TAG"


def _retain_old(
    con: sqlite3.Connection,
    state: Online,
    n: dict[str, str],
    old_indexes: list[tuple[str, str]],
    back: Rebuild,
) -> bool:
    """In the cut-over's transaction: make the old copy the shadow of the rebuild back, already
    filled: its spare indexes take the names the rebuild back expects, it keeps no foreign key,
    and capture triggers on the new table record every key the application changes from now on.
    False (the old copy is dropped as usual) when its indexes are not the new table's."""
    live = read_table(con, state.spec.table)
    if sorted(live.indexes) != sorted(old_indexes) or plan_copy(live, back).shadow_key is None:
        return False
    con.execute(f"ALTER TABLE {n['old']} RENAME TO {n['shadow']}")
    cookie = con.execute("PRAGMA schema_version").fetchone()[0]
    con.execute("PRAGMA writable_schema = ON")
    try:
        for i, index in enumerate(live.indexes):
            temp = f"{n['index']}_{i}"
            con.execute(
                "UPDATE sqlite_schema SET name = ?, sql = ? WHERE type = 'index' AND name = ?",
                (
                    temp,
                    _shadow_index_sql(index[1], temp, n["shadow"]),
                    f"{n['old']}_ix_{old_indexes.index(index)}",
                ),
            )
        con.execute(f"PRAGMA schema_version = {int(cookie) + 1}")
    finally:
        con.execute("PRAGMA writable_schema = RESET")
    for ddl in _changes_ddl(n, live) + _parents_ddl(n, foreign_keys(con, back.create_sql) or []):
        con.execute(ddl)
    con.execute(f"DELETE FROM {STATE_TABLE} WHERE id = ?", (state.id,))
    con.execute(
        f"INSERT INTO {STATE_TABLE} (id, table_name, phase, target_sql, source_sql, started_at) "
        "VALUES (?, ?, 'reconcile', ?, ?, ?)",
        (f"{REVERT_PREFIX}{state.version}:{n['id']}", live.name, back.create_sql, live.sql, time.time()),
    )
    return True


def shadow_indexes_match(con: sqlite3.Connection, state: Online) -> bool:
    """True when the shadow has, under the names the cut-over expects, an index for each index the
    table has now (a kept old copy made before an index was added or dropped has not)."""
    n = names(state.source.name)
    have = dict(
        con.execute(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (n["shadow"],),
        ).fetchall()
    )
    want = {
        f"{n['index']}_{i}": _shadow_index_sql(sql, f"{n['index']}_{i}", n["shadow"])
        for i, (_, sql) in enumerate(state.source.indexes)
    }
    return have == want


def end_revert_windows(con: sqlite3.Connection, path: str, timeout_ms: int, every: bool = False) -> list[str]:
    """End the revert windows that are over (the migration no longer applied, or its
    revert_until passed; `every`: all of them): the capture triggers go and the old copy is
    emptied and dropped in short transactions, as after a cut-over without a window."""
    if con.execute(f"SELECT 1 FROM sqlite_schema WHERE name = '{STATE_TABLE}'").fetchone() is None:
        return []
    applied = tracking.read_tracking(con)
    ended = []
    for state_id, table in con.execute(
        f"SELECT id, table_name FROM {STATE_TABLE} WHERE substr(id, 1, ?) = ? AND phase != 'drop-old'",
        (len(REVERT_PREFIX), REVERT_PREFIX),
    ).fetchall():
        version = state_id[len(REVERT_PREFIX) :].split(":")[0]
        until = (applied[version].record().get("revert_until") or 0) if version in applied else 0
        if not every and time.time() < float(until):
            continue  # its window is open: a rollback may still revert it
        n = names(table)
        with write_transaction(con, path, timeout_ms):
            for name in _capture_triggers(con, n):
                con.execute(f"DROP TRIGGER {name}")
            con.execute(f"DROP TABLE IF EXISTS {n['changes']}")
            con.execute(f"DROP TABLE IF EXISTS {n['parents']}")
            shadow = con.execute("SELECT 1 FROM sqlite_schema WHERE name = ?", (n["shadow"],)).fetchone()
            taken = con.execute("SELECT 1 FROM sqlite_schema WHERE name = ?", (n["old"],)).fetchone()
            if not shadow or taken:  # nothing kept, or another cut-over's old copy still waits
                con.execute(f"DROP TABLE IF EXISTS {n['shadow']}")
                con.execute(f"DELETE FROM {STATE_TABLE} WHERE id = ?", (state_id,))
            else:
                con.execute(f"ALTER TABLE {n['shadow']} RENAME TO {n['old']}")
                con.execute(
                    f"UPDATE {STATE_TABLE} SET phase = 'drop-old', table_name = ? WHERE id = ?",
                    (n["old"], state_id),
                )
        ended.append(f"ended the revert window of {table}: its old copy is dropped ({state_id})")
    drop_old_tables(con, path, timeout_ms)
    return ended


def drop_old_tables(
    con: sqlite3.Connection, path: str, timeout_ms: int, throttle: Throttle | None = None
) -> int:
    """Empty and drop the tables online cut-overs left behind (see _drop_old_tables)."""
    # The first batch starts small: the old table's indexes are out of the page cache by now, and
    # 2,000 deletes at random places in three cold indexes held the lock 2.7 s at 10M rows.
    with relaxed_sync(con):
        return _drop_old_tables(con, path, timeout_ms, throttle or Throttle(rows=Throttle.min_rows))


def _drop_old_tables(con: sqlite3.Connection, path: str, timeout_ms: int, throttle: Throttle) -> int:
    """Empty and drop the tables online cut-overs left behind, in short transactions; rows freed.

    Dropping a large table at once holds the write lock for as long as it takes to free every
    page (0.5 s for 1M rows here); deleting in batches sized like the copy's keeps each write
    transaction near the same budget.
    """
    if con.execute(f"SELECT 1 FROM sqlite_schema WHERE name = '{STATE_TABLE}'").fetchone() is None:
        return 0
    freed = 0
    for state_id, old in con.execute(
        f"SELECT id, table_name FROM {STATE_TABLE} WHERE phase = 'drop-old'"
    ).fetchall():
        while True:
            with write_transaction(con, path, timeout_ms) as txn:
                exists = con.execute(
                    "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (old,)
                ).fetchone()
                key = _pk(con, old) if exists and _without_rowid(con, old) else "rowid"
                gone = (
                    con.execute(
                        f"DELETE FROM {quote_ident(old)} WHERE ({key}) IN "
                        f"(SELECT {key} FROM {quote_ident(old)} LIMIT {int(throttle.rows)})"
                    ).rowcount
                    if exists
                    else 0
                )
                if gone == 0:
                    con.execute(f"DROP TABLE IF EXISTS {quote_ident(old)}")
                    con.execute(f"DELETE FROM {STATE_TABLE} WHERE id = ?", (state_id,))
                faults.point("rebuild-dropping-old")
            freed += gone
            if gone == 0:
                break
            throttle.after(txn)
    if freed:
        faults.point("rebuild-old-dropped")
    return freed


def is_without_rowid(create_sql: str) -> bool:
    """True when a CREATE TABLE statement ends WITHOUT ROWID (its comments ignored)."""
    return "WITHOUT ROWID" in " ".join(_options(create_sql).upper().split())


def _without_rowid(con: sqlite3.Connection, table: str) -> bool:
    sql = con.execute("SELECT sql FROM sqlite_schema WHERE name = ?", (table,)).fetchone()[0]
    return is_without_rowid(sql)


def _pk(con: sqlite3.Connection, table: str) -> str:
    pk = sorted((r[5], r[1]) for r in con.execute(f"PRAGMA table_info({quote_ident(table)})") if r[5])
    return ", ".join(quote_ident(c) for _, c in pk)


def abandon_online(con: sqlite3.Connection, table: str, path: str, timeout_ms: int) -> None:
    """Remove an unfinished online rebuild's objects: the application's writes never notice."""
    with write_transaction(con, path, timeout_ms):
        _drop_online_objects(con, table)


def finish_leftovers(database: str, timeout_ms: int, keep: frozenset[str] = frozenset()) -> list[str]:
    """After a crash or an abandoned migration: drop the tables committed cut-overs left, and
    remove the shadow, key table and capture triggers of every online rebuild not in `keep`
    (ids "version:tag") that no run will finish. Returns what was done, for the report."""
    done: list[str] = []
    with connection(database, timeout_ms) as con:
        if con.execute(f"SELECT 1 FROM sqlite_schema WHERE name = '{STATE_TABLE}'").fetchone() is None:
            return done
        stale = con.execute(
            f"SELECT id, table_name FROM {STATE_TABLE} WHERE phase != 'drop-old' ORDER BY id"
        ).fetchall()
        for state_id, table in stale:
            if state_id.startswith(REVERT_PREFIX):
                continue  # a rebuild back: end_revert_windows decides
            if state_id not in keep:
                abandon_online(con, table, database, timeout_ms)
                done.append(
                    f"removed the unfinished online rebuild of {table} ({state_id}): its shadow copy, "
                    "key table and capture triggers"
                )
        done += end_revert_windows(con, database, timeout_ms)
        freed = drop_old_tables(con, database, timeout_ms)
        if freed:
            done.append(f"dropped the old copy a finished online rebuild left ({freed:,} rows)")
    return done


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
