"""The online rebuild: shadow table, capture triggers, batched copy, then a short cut-over.

The shadow table and its indexes are created and filled beforehand in short transactions while capture
triggers record the keys the application changes; the migration's transaction then only drains that
backlog and swaps the tables and index names. The old copy is kept as the revert's shadow for the revert
window, then emptied and dropped in short batches (docs/rebuild.md).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from liteshift.core import faults, tracking
from liteshift.core.db import Held, connection, write_transaction
from liteshift.core.errors import BadInput, CheckFailed, DatabaseLocked
from liteshift.core.migrations import Rebuild
from liteshift.core.progress import Progress, Tick, tell
from liteshift.core.sql import quote_ident
from liteshift.core.tables import AUTOINCREMENT_RE, ROWID_NAMES, Table, pk, read_table, renamed, without_rowid
from liteshift.core.throttle import Throttle
from liteshift.rebuild.blocking import execute, restore_around
from liteshift.rebuild.constraints import without_foreign_keys
from liteshift.rebuild.foreign_keys import ForeignKey, check_foreign_keys, fk_failure, foreign_keys
from liteshift.rebuild.prebuild import duplicate_keys
from liteshift.rebuild.schema import (
    STATE_COLUMNS,
    STATE_DDL,
    STATE_TABLE,
    Copy,
    Names,
    RebuildStats,
    capture_triggers,
    drop_online_objects,
    names,
    plan_copy,
    shadow_index_sql,
    stored_index_sql,
)


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
    prebuilt: tuple[tuple[str, str], ...] = ()  # (name, CREATE INDEX) of the batch, on the shadow

    @property
    def id(self) -> str:
        return f"{self.version}:{names(self.source.name).id}"


def _changes_ddl(n: Names, source: Table) -> list[str]:
    keys = ", ".join(f"k{i}" for i in range(len(source.key)))
    t = quote_ident(source.name)

    def record(prefix: str) -> str:
        vals = ", ".join(f"{prefix}.{quote_ident(k)}" for k in source.key)
        return f"INSERT INTO {n.changes} ({keys}) VALUES ({vals});"

    ddl = [
        f"CREATE TABLE {n.changes} (seq INTEGER PRIMARY KEY, {keys})",
        f"CREATE TRIGGER {n.trigger}_i AFTER INSERT ON {t} BEGIN {record('NEW')} END",
        f"CREATE TRIGGER {n.trigger}_u AFTER UPDATE ON {t} BEGIN {record('OLD')} {record('NEW')} END",
        f"CREATE TRIGGER {n.trigger}_d AFTER DELETE ON {t} BEGIN {record('OLD')} END",
    ]
    # INSERT OR REPLACE deletes a row through a UNIQUE conflict without firing a DELETE trigger
    # (unless recursive_triggers is on): record the rows such a write is about to replace.
    conflicts = " ".join(
        f"INSERT INTO {n.changes} ({keys}) SELECT {', '.join(quote_ident(k) for k in source.key)} "
        f"FROM {t} WHERE " + " AND ".join(f"{quote_ident(c)} = NEW.{quote_ident(c)}" for c in cols) + ";"
        for cols in source.unique_sets
    )
    if conflicts:
        ddl += [
            f"CREATE TRIGGER {n.trigger}_bi BEFORE INSERT ON {t} BEGIN {conflicts} END",
            f"CREATE TRIGGER {n.trigger}_bu BEFORE UPDATE ON {t} BEGIN {conflicts} END",
        ]
    return ddl


def _parents_ddl(n: Names, fks: list[ForeignKey]) -> list[str]:
    """Record the parent keys the application deletes or changes during the copy, per foreign key,
    so the cut-over checks only the rows that pointed at them instead of the whole table."""
    if not fks:
        return []
    width = max(len(fk.columns) for fk in fks)
    values = ", ".join(f"v{i}" for i in range(width))
    ddl = [f"CREATE TABLE {n.parents} (seq INTEGER PRIMARY KEY, fk INTEGER, {values})"]
    for k, fk in enumerate(fks):
        cols = ", ".join(f"v{i}" for i in range(len(fk.columns)))
        old = ", ".join(f"OLD.{quote_ident(c)}" for c in fk.parent_columns)
        changed = " OR ".join(f"OLD.{quote_ident(c)} IS NOT NEW.{quote_ident(c)}" for c in fk.parent_columns)
        record = f"INSERT INTO {n.parents} (fk, {cols}) VALUES ({k}, {old});"
        parent = quote_ident(fk.parent)
        ddl += [
            f"CREATE TRIGGER {n.trigger}_p{k}d AFTER DELETE ON {parent} BEGIN {record} END",
            f"CREATE TRIGGER {n.trigger}_p{k}u AFTER UPDATE ON {parent} WHEN {changed} BEGIN {record} END",
        ]
    return ddl


# A copy takes minutes to hours: one long transaction of the application (past the busy timeout)
# must not end it. Not getting the lock wrote nothing, so the batch asks again, backing off.
LOCK_RETRIES = 6  # waits of 0.5, 1, 2, 4, 5 s between them, besides the busy timeout each time


@contextmanager
def _batch(con: sqlite3.Connection, path: str, timeout_ms: int) -> Iterator[Held]:
    """One batch's write transaction; the lock not had within the busy timeout is asked for again."""
    for attempt in range(LOCK_RETRIES):
        stack = ExitStack()
        try:
            held = stack.enter_context(write_transaction(con, path, timeout_ms))
        except DatabaseLocked:
            if attempt == LOCK_RETRIES - 1:
                raise
            time.sleep(min(5.0, 0.5 * 2**attempt))
            continue
        with stack:
            yield held
        return


def start_online(
    con: sqlite3.Connection,
    spec: Rebuild,
    version: str,
    path: str,
    timeout_ms: int,
    prebuilt: tuple[tuple[str, str], ...] = (),
) -> Online:
    """Create (or find, after a crash) the shadow table, its indexes and the capture triggers.

    prebuilt: indexes the batch creates on the table, built on the shadow beside the application
    (an index build: spec is the table's own definition) and named as declared at the cut-over.
    """
    with _batch(con, path, timeout_ms):
        con.execute(STATE_DDL)
        _add_state_columns(con)
        source = read_table(con, spec.table)
        copy = plan_copy(source, spec)
        if copy.shadow_key is None:
            raise BadInput(
                f"The rebuild of {source.name} cannot run online",
                "the new definition does not keep each row's key (rowid or primary key) unchanged, "
                "so changed rows could not be matched",
                "use --rebuild-mode blocking" + (" and --index-mode blocking" if prebuilt else ""),
            )
        n = names(source.name)
        state = Online(spec, version, source, copy, RebuildStats(source.name, "online"), prebuilt=prebuilt)
        state.stats.index_build = bool(prebuilt) and spec.create_sql == source.sql
        state.stats.prebuilt_indexes = len(prebuilt)
        state.fks = foreign_keys(con, spec.create_sql)
        row = con.execute(
            f"SELECT phase, target_sql, source_sql, position, prebuilt FROM {STATE_TABLE} WHERE id = ?",
            (state.id,),
        ).fetchone()
        wanted = json.dumps([list(ix) for ix in prebuilt])
        if row and row[1] == spec.create_sql and row[2] == source.sql and row[4] == wanted:
            state.phase, state.position = row[0], json.loads(row[3]) if row[3] else None
            return state  # resume where the killed run stopped
        drop_online_objects(con, source.name)
        # Without its foreign keys until the cut-over: the application's parent deletes must not
        # be checked against (or cascade into) rows the migration has not committed yet.
        con.execute(renamed(without_foreign_keys(spec.create_sql), n.shadow))
        for i, (_, sql) in enumerate(source.indexes):
            con.execute(shadow_index_sql(sql, f"{n.index}_{i}", n.shadow))
        for j, (_, sql) in enumerate(prebuilt):
            execute(con, shadow_index_sql(sql, _prebuilt_name(n, j), n.shadow), source)
        for ddl in _changes_ddl(n, source) + _parents_ddl(n, state.fks or []):
            con.execute(ddl)
        con.execute(
            f"INSERT INTO {STATE_TABLE} (id, table_name, phase, target_sql, source_sql, started_at, "
            "prebuilt) VALUES (?, ?, 'copy', ?, ?, ?, ?)",
            (state.id, source.name, spec.create_sql, source.sql, time.time(), wanted),
        )
        faults.point("rebuild-preparing")
    faults.point("rebuild-prepared")
    return state


def _prebuilt_name(n: Names, j: int) -> str:
    return f"{n.index}_n{j}"


def _add_state_columns(con: sqlite3.Connection) -> None:
    """The state table of an older liteshift gains the columns added since (inside a transaction)."""
    have = {r[1] for r in con.execute(f"PRAGMA table_info({STATE_TABLE})")}
    for column, decl in STATE_COLUMNS.items():
        if column not in have:
            con.execute(f"ALTER TABLE {STATE_TABLE} ADD COLUMN {column} {decl}")


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
        f"SELECT max(seq) FROM (SELECT seq FROM {n.changes} ORDER BY seq LIMIT ?)", (limit or -1,)
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
    keys = con.execute(f"SELECT DISTINCT {', '.join(ks)} FROM {n.changes} WHERE {where}", params).fetchall()
    shadow_key = state.copy.shadow_key or state.source.key
    for chunk in (keys[i : i + 200] for i in range(0, len(keys), 200)):
        flat = tuple(v for k in chunk for v in k)
        con.execute(
            f"DELETE FROM {quote_ident(n.shadow)} WHERE {_key_where(shadow_key, 'IN', len(chunk))}", flat
        )
        execute(
            con,
            state.copy.insert(
                n.shadow, state.source, f" WHERE {_key_where(state.source.key, 'IN', len(chunk))}"
            ),
            state.source,
            flat,
        )
    consumed = con.execute(f"DELETE FROM {n.changes} WHERE seq <= ?", (last,)).rowcount
    state.stats.reconciled += len(keys)
    state.unchecked.update(tuple(k) for k in keys)
    return int(consumed)


def copy_online(
    con: sqlite3.Connection,
    state: Online,
    path: str,
    timeout_ms: int,
    throttle: Throttle | None = None,
    on_progress: Progress | None = None,
    check: bool = True,
) -> RebuildStats:
    """Copy by key range, each batch with the backlog before it in one short transaction; then
    reconcile until the backlog is small, and (`check`) check the copied rows' foreign keys and
    compare them with the table. Each transaction records the position it reached, so a killed
    copy resumes there.

    The checks belong just before the cut-over, and leave state in memory that the cut-over uses:
    the flow's copy step passes check=False, and the migrate step, which resumes that copy, checks.
    """
    throttle = throttle or Throttle()
    cache = con.execute("PRAGMA cache_size").fetchone()[0]
    # The prebuilt indexes take the rows in key order of the table, at random places of their
    # own: a larger page cache keeps more of them in memory (measured: -22% copy time at 300K rows).
    con.execute(f"PRAGMA cache_size = {-1024 * throttle.cache_mib}")
    try:
        with throttle.writing(con), _duplicates_named(con, state):
            return _copy_online(con, state, path, timeout_ms, throttle, on_progress, check)
    finally:
        con.execute(f"PRAGMA cache_size = {int(cache)}")


@contextmanager
def _duplicates_named(con: sqlite3.Connection, state: Online) -> Iterator[None]:
    """A UNIQUE index of the batch that meets two rows with one key (the application wrote them
    during the copy, or the new columns make them equal) fails the copy naming the key."""
    try:
        yield
    except CheckFailed as exc:
        if "UNIQUE constraint failed" not in exc.why or not state.prebuilt or con.in_transaction:
            raise
        for name, sql in state.prebuilt:
            found = duplicate_keys(con, state.source.name, sql) if state.stats.index_build else None
            if found or (name in exc.why and not state.stats.index_build):
                raise CheckFailed(
                    f"The unique index {name} cannot be built on {state.source.name}",
                    found or exc.why,
                    "remove the duplicates (or drop UNIQUE from the index), then run again; "
                    "nothing was swapped",
                ) from exc
        raise


def _copy_online(
    con: sqlite3.Connection,
    state: Online,
    path: str,
    timeout_ms: int,
    throttle: Throttle,
    on_progress: Progress | None,
    check: bool,
) -> RebuildStats:
    n = names(state.source.name)
    src, key = state.source, state.source.key
    total = max(1, con.execute(f"SELECT count(*) FROM {quote_ident(src.name)}").fetchone()[0])

    def told(phase: str, done: int) -> None:
        tell(on_progress, Tick(f"{phase} {src.name}", min(done, total), total, database=path))

    if state.phase == "copy":
        told("copy", state.stats.rows)
    start = time.perf_counter()
    while state.phase == "copy":
        with _batch(con, path, timeout_ms) as txn:
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
            copied = execute(
                con,
                state.copy.insert(n.shadow, src, f" WHERE {clause}" if clause else ""),
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
        told("copy", state.stats.rows if state.phase == "copy" else total)
        throttle.after(txn, con)
    _converge(con, state, path, timeout_ms, throttle)
    if not check:  # the flow's copy step: the migrate step checks, just before its cut-over
        state.stats.copy_seconds = time.perf_counter() - start
        return state.stats
    precheck_foreign_keys(con, state)
    verify_copy(con, state, told=lambda done: told("verify", done))
    told("verify", total)
    # The writes made during the pre-check and the verification (1.9 s and more at 10M rows)
    # would otherwise all wait for the cut-over: reconcile once more, so the lock drains only
    # the last few keys. Those are checked incrementally at the cut-over, like every key
    # reconciled after the pre-check.
    _converge(con, state, path, timeout_ms, throttle)
    state.stats.copy_seconds = time.perf_counter() - start
    return state.stats


VERIFY_ROWS = 20_000  # rows compared per read transaction


def verify_copy(
    con: sqlite3.Connection,
    state: Online,
    chunk: int = VERIFY_ROWS,
    told: Callable[[int], None] | None = None,
) -> None:
    """Compare the shadow with the table, range by range of keys, before the cut-over.

    Each range is read in one snapshot of both tables. There, a row may differ only if the
    application changed it after its last reconcile, and then its key is in the backlog (the
    capture trigger writes it in the application's own transaction): those are left to the
    cut-over's drain. Any other difference is a write that reached the table without its capture
    trigger; the migration fails naming the first keys, and nothing is swapped. The table's rows
    pass through a TEMP table of the new definition, so they meet the same column affinities as
    the shadow's.
    """
    n, src, copy = names(state.source.name), state.source, state.copy
    skey = copy.shadow_key or src.key
    cols = ", ".join(quote_ident(c) for c in copy.targets)
    ks = ", ".join(f"k{i}" for i in range(len(src.key)))
    by_key = ", ".join(quote_ident(k) for k in src.key)
    scratch = "liteshift_verify"
    # The key as the compared rows name it: the rowid is a column of theirs only when carried.
    shown = tuple(
        copy.target.ipk if k.lower() in ROWID_NAMES and k not in copy.targets and copy.target.ipk else k
        for k in skey
    )
    keys = ", ".join(quote_ident(k) for k in shown)
    con.execute(f"DROP TABLE IF EXISTS temp.{scratch}")
    # Without AUTOINCREMENT: it would create temp.sqlite_sequence, which then hides the main one
    # from every unqualified name on this connection (the cut-over carries the sequence over).
    definition = AUTOINCREMENT_RE.sub("", renamed(without_foreign_keys(state.spec.create_sql), scratch))
    con.execute(re.sub(r"^\s*CREATE\s+TABLE", "CREATE TEMP TABLE", definition))
    position: tuple[object, ...] | None = None
    try:
        while True:
            con.execute("BEGIN")
            try:
                where = f" WHERE {_key_where(src.key, '>')}" if position is not None else ""
                bound = con.execute(
                    f"SELECT {by_key} FROM {quote_ident(src.name)}{where} ORDER BY {by_key} "
                    f"LIMIT 1 OFFSET {chunk - 1}",
                    position or (),
                ).fetchone()
                params = (*(position or ()), *(bound or ()))
                upper = [_key_where(src.key, "<=")] if bound else []
                lower = [_key_where(src.key, ">")] if position is not None else []
                fresh = (
                    f"({', '.join(quote_ident(k) for k in src.key)}) NOT IN (SELECT {ks} FROM {n.changes})"
                )
                con.execute(f"DELETE FROM temp.{scratch}")
                compared = con.execute(
                    f"INSERT INTO temp.{scratch} ({cols}) "
                    + copy.select(src, " WHERE " + " AND ".join([*lower, *upper, fresh])),
                    params,
                ).rowcount
                s_lower = [_key_where(skey, ">")] if position is not None else []
                s_upper = [_key_where(skey, "<=")] if bound else []
                s_fresh = f"({', '.join(quote_ident(k) for k in skey)}) NOT IN (SELECT {ks} FROM {n.changes})"
                in_shadow = f"SELECT {cols} FROM {quote_ident(n.shadow)} WHERE " + " AND ".join(
                    [*s_lower, *s_upper, s_fresh]
                )
                mine = f"SELECT {cols} FROM temp.{scratch}"
                differ = con.execute(
                    f"SELECT {keys} FROM ({mine} EXCEPT {in_shadow}) UNION "
                    f"SELECT {keys} FROM ({in_shadow} EXCEPT {mine}) ORDER BY 1 LIMIT 3",
                    params + params,
                ).fetchall()
            finally:
                con.execute("COMMIT")
            faults.point("rebuild-verify-range")
            if differ:
                first = ", ".join(_key_text(shown, tuple(k)) for k in differ)
                raise CheckFailed(
                    f"The copy of {src.name} differs from the table",
                    f"first keys: {first}; a write reached the table without the capture trigger that "
                    "records it (a connection with triggers dropped, or a file changed by hand)",
                    "run again: the copy starts over; nothing was swapped",
                )
            state.stats.verified_rows += compared
            if bound is None:
                return
            position = tuple(bound)
            if told is not None:
                told(state.stats.verified_rows)
    finally:
        con.execute(f"DROP TABLE IF EXISTS temp.{scratch}")


def _converge(con: sqlite3.Connection, state: Online, path: str, timeout_ms: int, throttle: Throttle) -> None:
    """Reconcile until the backlog is small enough for the cut-over to drain at once; a writer
    faster than the reconcile is not chased for ever: the cut-over then drains what is left."""
    n = names(state.source.name)
    deadline = time.perf_counter() + throttle.converge_s
    while True:
        with _batch(con, path, timeout_ms) as txn:
            _reconcile(con, state, throttle.rows, False)
            faults.point("rebuild-reconcile")
        state.stats.longest_txn_seconds = max(state.stats.longest_txn_seconds, txn.held)
        backlog = con.execute(f"SELECT count(*) FROM {n.changes}").fetchone()[0]
        # The cut-over drains what is left inside the lock: at 10M rows the 10:53 bench left
        # 2,754 keys (a batch's worth), which took most of its 225 ms cut-over.
        if backlog <= throttle.cutover_backlog or time.perf_counter() > deadline:
            return
        throttle.after(txn, con)


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
            bad = con.execute(fk.violations(con, n.shadow, key)).fetchall()
            fk_failure(
                state.source.name,
                [(state.source.name, _key_text(key, r), fk.parent) for r in bad],
                "nothing was swapped; fix those rows (or their parents) and run again",
            )
        top = con.execute(f"SELECT max(seq) FROM {n.parents}").fetchone()[0] if state.fks else 0
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
        or len([t for t in capture_triggers(con, n) if "_p" in t[len(n.trigger) :]]) < expected
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
            f"SELECT DISTINCT fk, {cols} FROM {n.parents} WHERE seq > ?", (state.parents_seq,)
        ).fetchall():
            fk = state.fks[k]
            where = "".join(f" AND c.{quote_ident(c)} = ?" for c in fk.columns)
            rows = con.execute(
                fk.violations(con, table, key, where), tuple(values[: len(fk.columns)])
            ).fetchall()
            bad += [(table, _key_text(key, r), fk.parent) for r in rows]
    fk_failure(state.source.name, bad[:6])
    check_foreign_keys(con, table, itself=False)


def cut_over(con: sqlite3.Connection, state: Online, retain_back: Rebuild | None = None) -> RebuildStats:
    """Inside the migration's transaction: drain, check, swap tables and index names, restore.

    retain_back: the rebuild that would undo this one; the old copy is then kept as its shadow,
    already filled, and fed by capture triggers on the new table (see _retain_old) instead of
    being dropped, so that a rollback only replays what changed since and cuts over again.
    """
    start = time.perf_counter()
    n = names(state.source.name)
    state.stats.backlog_at_cutover = con.execute(f"SELECT count(*) FROM {n.changes}").fetchone()[0]
    while _reconcile(con, state, None, False):
        pass
    capture = {f"{n.trigger}_{s}" for s in ("i", "u", "d", "bi", "bu")}
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
    con.execute(f"DROP TABLE {n.changes}")
    # legacy_alter_table ON (with foreign_keys off): the renames rewrite no other table's
    # REFERENCES, view or trigger; the schema is re-parsed explicitly below instead.
    con.execute("PRAGMA legacy_alter_table = ON")
    con.execute(f"ALTER TABLE {quote_ident(now.name)} RENAME TO {n.old}")
    con.execute(f"ALTER TABLE {n.shadow} RENAME TO {quote_ident(now.name)}")
    prepared = list(state.source.indexes)
    prebuilt = {index: f"{n.index}_{i}" for i, index in enumerate(prepared)}
    indexes = [(name, sql, prebuilt.get((name, sql))) for name, sql in now.indexes]
    # The batch's own indexes, built on the shadow: their statements are skipped, so they are
    # not on the old table, and get their declared names here.
    indexes += [
        (name, stored_index_sql(sql), _prebuilt_name(n, j)) for j, (name, sql) in enumerate(state.prebuilt)
    ]
    _swap_schema_rows(con, n, indexes, (now.name, renamed(state.spec.create_sql, now.name)))
    for index in prepared:
        if index not in now.indexes:  # dropped by this migration's earlier statements
            con.execute(f"DROP INDEX {prebuilt[index]}")
    for index in now.indexes:
        if index not in prebuilt:  # created by this migration's earlier statements: build it now
            execute(con, index[1], now)
            state.stats.built_in_lock += 1
    con.execute(
        f"UPDATE {STATE_TABLE} SET phase = 'drop-old', table_name = ?, position = NULL WHERE id = ?",
        (n.old, state.id),
    )
    restore_around(
        con, now, state.copy, dependents=False, fk_check=lambda: _incremental_fk_check(con, state, now.name)
    )
    for name in capture_triggers(con, n):  # the parents' ones, kept for the check above
        con.execute(f"DROP TRIGGER {name}")
    con.execute(f"DROP TABLE IF EXISTS {n.parents}")
    if retain_back is not None:
        state.stats.retained = _retain_old(
            con, state, n, [(name, sql) for name, sql, _ in indexes], retain_back
        )
    faults.point("rebuild-cutover-swapped")
    state.stats.cutover_seconds = time.perf_counter() - start
    return state.stats


def _swap_schema_rows(
    con: sqlite3.Connection,
    n: Names,
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
            spare = f"{n.old}_ix_{j}"
            con.execute(
                "UPDATE sqlite_schema SET name = ?, sql = ? WHERE type = 'index' AND name = ?",
                (spare, shadow_index_sql(sql, spare, n.old), name),
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
        old_sql = con.execute("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (n.old,))
        row = old_sql.fetchone()
        if row is not None:
            con.execute(
                "UPDATE sqlite_schema SET sql = ? WHERE type = 'table' AND name = ?",
                (without_foreign_keys(row[0]), n.old),
            )
        con.execute(f"PRAGMA schema_version = {int(cookie) + 1}")
    finally:
        con.execute("PRAGMA writable_schema = RESET")


REVERT_PREFIX = "undo-"  # state ids of rebuilds back: "undo-VERSION:TAG"


def _retain_old(
    con: sqlite3.Connection,
    state: Online,
    n: Names,
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
    con.execute(f"ALTER TABLE {n.old} RENAME TO {n.shadow}")
    cookie = con.execute("PRAGMA schema_version").fetchone()[0]
    con.execute("PRAGMA writable_schema = ON")
    try:
        for i, index in enumerate(live.indexes):
            temp = f"{n.index}_{i}"
            con.execute(
                "UPDATE sqlite_schema SET name = ?, sql = ? WHERE type = 'index' AND name = ?",
                (
                    temp,
                    shadow_index_sql(index[1], temp, n.shadow),
                    f"{n.old}_ix_{old_indexes.index(index)}",
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
        (f"{REVERT_PREFIX}{state.version}:{n.id}", live.name, back.create_sql, live.sql, time.time()),
    )
    return True


def shadow_indexes_match(con: sqlite3.Connection, state: Online) -> bool:
    """True when the shadow has, under the names the cut-over expects, an index for each index the
    table has now (a kept old copy made before an index was added or dropped has not)."""
    n = names(state.source.name)
    have = dict(
        con.execute(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (n.shadow,),
        ).fetchall()
    )
    want = {
        f"{n.index}_{i}": shadow_index_sql(sql, f"{n.index}_{i}", n.shadow)
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
            for name in capture_triggers(con, n):
                con.execute(f"DROP TRIGGER {name}")
            con.execute(f"DROP TABLE IF EXISTS {n.changes}")
            con.execute(f"DROP TABLE IF EXISTS {n.parents}")
            shadow = con.execute("SELECT 1 FROM sqlite_schema WHERE name = ?", (n.shadow,)).fetchone()
            taken = con.execute("SELECT 1 FROM sqlite_schema WHERE name = ?", (n.old,)).fetchone()
            if not shadow or taken:  # nothing kept, or another cut-over's old copy still waits
                con.execute(f"DROP TABLE IF EXISTS {n.shadow}")
                con.execute(f"DELETE FROM {STATE_TABLE} WHERE id = ?", (state_id,))
            else:
                con.execute(f"ALTER TABLE {n.shadow} RENAME TO {n.old}")
                con.execute(
                    f"UPDATE {STATE_TABLE} SET phase = 'drop-old', table_name = ? WHERE id = ?",
                    (n.old, state_id),
                )
        ended.append(f"ended the revert window of {table}: its old copy is dropped ({state_id})")
    drop_old_tables(con, path, timeout_ms)
    return ended


def drop_old_tables(
    con: sqlite3.Connection,
    path: str,
    timeout_ms: int,
    throttle: Throttle | None = None,
    on_progress: Progress | None = None,
) -> int:
    """Empty and drop the tables online cut-overs left behind (see _drop_old_tables)."""
    # The first batch starts small: the old table's indexes are out of the page cache by now, and
    # 2,000 deletes at random places in three cold indexes held the lock 2.7 s at 10M rows.
    throttle = throttle or Throttle(rows=Throttle.min_rows)
    with throttle.writing(con):
        return _drop_old_tables(con, path, timeout_ms, throttle, on_progress)


def _drop_old_tables(
    con: sqlite3.Connection, path: str, timeout_ms: int, throttle: Throttle, on_progress: Progress | None
) -> int:
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
        exists = con.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (old,)
        ).fetchone()
        total = con.execute(f"SELECT count(*) FROM {quote_ident(old)}").fetchone()[0] if exists else 0
        emptied = 0
        while True:
            with _batch(con, path, timeout_ms) as txn:
                exists = con.execute(
                    "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (old,)
                ).fetchone()
                key = pk(con, old) if exists and without_rowid(con, old) else "rowid"
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
            emptied += gone
            tell(on_progress, Tick(f"drop old copy {old}", emptied if gone else total, total, database=path))
            if gone == 0:
                break
            throttle.after(txn, con)
    if freed:
        faults.point("rebuild-old-dropped")
    return freed


def abandon_online(con: sqlite3.Connection, table: str, path: str, timeout_ms: int) -> None:
    """Remove an unfinished online rebuild's objects: the application's writes never notice."""
    with write_transaction(con, path, timeout_ms):
        drop_online_objects(con, table)


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
