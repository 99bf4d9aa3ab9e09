"""Archiving: move a table's rows older than a cutoff into an archive SQLite file, online.

Per batch, in key order: the rows are copied into the archive and their keys noted there as
pending (one archive transaction, synced); then the live rows still identical to their copy
are deleted (one short live transaction, BEGIN IMMEDIATE); then the copies of the rows that were
not deleted (changed or deleted by the application meanwhile) are removed from the archive and
the pending keys cleared. A crash anywhere leaves every row in the live file, in the archive, or
both (identical): never in neither. The position, the pending keys and the run's owner live in
the archive file; the live database gets no table of liteshift's.

Rows whose `column < before` move (SQLite's comparison, with the column's affinity: NULLs never
move). The archive table is created from the live table's own CREATE TABLE text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from liteshift.core import faults
from liteshift.core.db import SQLITE_HEADER, Held, check_is_sqlite_file, write_transaction
from liteshift.core.errors import BadInput, CheckFailed
from liteshift.core.lock import pid_alive
from liteshift.core.progress import Progress, Tick, tell
from liteshift.core.sql import failure_detail, quote_ident, strip_comments
from liteshift.core.tables import AUTOINCREMENT_RE, Table, read_table
from liteshift.core.throttle import Throttle

PROGRESS = "liteshift_archive_progress"
PROGRESS_DDL = f"""CREATE TABLE IF NOT EXISTS {PROGRESS} (
    table_name TEXT PRIMARY KEY COLLATE NOCASE,
    column_name TEXT NOT NULL,
    before TEXT NOT NULL,
    position TEXT,
    last INTEGER NOT NULL DEFAULT 0,
    host TEXT,
    pid INTEGER,
    heartbeat REAL NOT NULL
)"""
LIVE = "liteshift_live"  # the live file as the archive connection sees it (read-only)
ARCHIVE = "liteshift_archive"  # the archive as the live connection sees it (read-only)
STALE_AFTER_S = 300.0  # an owner silent this long is dead, whatever its host
_NAME = r"(?:\"(?:[^\"]|\"\")*\"|`(?:[^`]|``)*`|\[[^\]]*\]|[\w$]+)"
TRIGGER_EVENT_RE = re.compile(
    rf"^CREATE\s+(?:TEMP\s+|TEMPORARY\s+)?TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:{_NAME}\s*\.\s*)?{_NAME}\s+"
    r"(?:BEFORE\s+|AFTER\s+|INSTEAD\s+OF\s+)?(DELETE|INSERT|UPDATE)\b",
    re.IGNORECASE,
)


@dataclass
class ArchiveResult:
    """What one archive run did; every figure measured."""

    table: str
    column: str
    before: str
    archive: str
    copied: int = 0  # rows written into the archive this run (re-copies included)
    deleted: int = 0  # rows deleted from the live table this run
    kept_changed: int = 0  # copied, then changed or deleted by the application before our delete
    batches: int = 0
    seconds: float = 0.0
    longest_txn_seconds: float = 0.0  # longest liteshift write transaction on the live file
    stopped_early: bool = False  # the deadline came before the end: a rerun resumes
    remaining: int = 0  # rows still older than the cutoff in the live table at the end
    verified: bool = False  # count and digest of the deleted rows agree with the archive's copies
    digest: str = ""  # order-independent: sum mod 2**256 of each moved row's SHA-256, in hex
    freed_bytes: int = 0  # free pages given back to the file system afterwards
    key_conflicts: int = 0  # old rows left live: the archive holds another row under their key

    def as_dict(self) -> dict[str, object]:
        """The result as plain values."""
        return asdict(self)


@dataclass(frozen=True)
class Source:
    """The live table as archiving needs it."""

    table: Table
    column: str  # as stored
    key: tuple[str, ...]  # the row's key as columns: the IPK, the rowid, or the WITHOUT ROWID key
    targets: tuple[str, ...]  # what an INSERT names and what is compared: key (if rowid) + stored
    keeps_top: bool  # rowid table without AUTOINCREMENT: the highest row stays (no rowid reuse)

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def pending(self) -> str:
        """The archive's table of keys copied and not yet settled."""
        return "liteshift_archive_pending_" + hashlib.sha256(self.name.lower().encode()).hexdigest()[:8]


@dataclass
class _Run:
    """One archive run in progress."""

    live: sqlite3.Connection
    arc: sqlite3.Connection
    database: Path
    archive: Path
    src: Source
    before: str
    timeout_ms: int
    throttle: Throttle
    result: ArchiveResult
    schema_version: int
    position: tuple[object, ...] | None = None  # the last key the pass has copied
    total: int = 1  # old rows at the start, for on_progress
    handled: int = 0


# ---------------------------------------------------------------------------------------------
# Connections


def _connect(path: Path, timeout_ms: int, readonly: bool = False) -> sqlite3.Connection:
    """Autocommit connection by URI (so read-only ATTACHes work), with a busy timeout."""
    uri = path.resolve().as_uri() + ("?mode=ro" if readonly else "")
    con = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout_ms / 1000)
    con.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
    return con


@contextmanager
def _opened(path: Path, timeout_ms: int, readonly: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection that is closed, and never left in a transaction."""
    con = _connect(path, timeout_ms, readonly)
    try:
        yield con
    finally:
        if con.in_transaction:
            con.execute("ROLLBACK")
        con.close()


def _attach_readonly(con: sqlite3.Connection, path: Path, schema: str) -> None:
    """ATTACH a file read-only: BEGIN IMMEDIATE then takes no write lock on it."""
    con.execute(f"ATTACH DATABASE ? AS {schema}", (path.resolve().as_uri() + "?mode=ro",))


# ---------------------------------------------------------------------------------------------
# Refusals: all before anything is written


def _inspect(con: sqlite3.Connection, database: Path, table: str, column: str, before: str) -> Source:
    """The table to archive, or BadInput naming what stops it."""
    row = con.execute(
        "SELECT type, name, sql FROM sqlite_schema "
        "WHERE name = ? COLLATE NOCASE AND type IN ('table', 'view')",
        (table,),
    ).fetchone()
    if row is None or row[1].lower().startswith(("sqlite_", "liteshift_")):
        raise BadInput(
            f"Table {table!r} does not exist in {database.name}",
            "archiving moves the rows of an existing table",
            "check the table name (give it as it is, without SQL quotes); nothing was written",
        )
    if row[0] == "view":
        raise BadInput(
            f"{row[1]!r} in {database.name} is a view, not a table",
            "a view holds no rows of its own",
            "archive the table the view reads from; nothing was written",
        )
    if row[2].upper().startswith("CREATE VIRTUAL"):
        raise BadInput(
            f"Table {row[1]!r} is a virtual table",
            "its rows belong to its module (FTS, R*Tree) and cannot be copied and deleted row by row",
            "archive the table it is built from; nothing was written",
        )
    src = _source(con, read_table(con, row[1]), column)
    _refuse_parents(con, src.table)
    _refuse_delete_triggers(src.table)
    _refuse_cutoff(con, src, before)
    return src


def _source(con: sqlite3.Connection, table: Table, column: str) -> Source:
    """Key, INSERT columns and the rowid rule of the table; BadInput for a missing column."""
    found = [c for c in table.columns if c.lower() == column.lower()]
    if not found:
        raise BadInput(
            f"Table {table.name!r} has no column {column!r}",
            f"its columns are {', '.join(table.columns)}",
            "pass the column that holds each row's date; nothing was written",
        )
    if table.without_rowid:
        key, targets = table.key, table.stored
    elif table.ipk is not None:
        key, targets = (table.ipk,), table.stored
    elif table.key[0].lower() in {c.lower() for c in table.columns}:
        raise BadInput(
            f"Table {table.name!r} hides its rowid",
            "its columns named rowid, _rowid_ and oid leave no name for the rowid the archive must keep",
            "rename one of those columns, or give the table an INTEGER PRIMARY KEY; nothing was written",
        )
    else:
        key, targets = table.key, (table.key[0], *table.stored)  # the archive keeps the rowid
    autoincrement = AUTOINCREMENT_RE.search(strip_comments(table.sql)) is not None
    return Source(table, found[0], key, targets, keeps_top=not table.without_rowid and not autoincrement)


def _refuse_parents(con: sqlite3.Connection, table: Table) -> None:
    """BadInput when a foreign key points to the table: deleting its rows would reach other rows."""
    children = []
    for (name,) in con.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name"):
        refs = con.execute(f"PRAGMA foreign_key_list({quote_ident(name)})").fetchall()
        if any(r[2].lower() == table.name.lower() for r in refs):
            children.append(name)
    if table.name in children:
        raise BadInput(
            f"Table {table.name!r} has a foreign key to itself",
            "deleting an old row would cascade into, be refused for, or orphan the rows that point to it",
            "archive this table another way; liteshift archives only tables no foreign key points to; "
            "nothing was written",
        )
    if children:
        listed = ", ".join(repr(c) for c in children)
        raise BadInput(
            f"Table {table.name!r} is referenced by a foreign key of {listed}",
            "deleting its rows would cascade into those tables, be refused, or leave their rows pointing "
            "at nothing",
            f"archive the child tables ({listed}) first; liteshift archives only tables no foreign key "
            "points to; nothing was written",
        )


def _refuse_delete_triggers(table: Table) -> None:
    """BadInput when the table has DELETE triggers: they would fire for every archived row."""
    names = []
    for name, sql in table.triggers:
        m = TRIGGER_EVENT_RE.match(strip_comments(sql))
        if m is None or m.group(1).upper() == "DELETE":  # unreadable: assume the worst
            names.append(name)
    if names:
        raise BadInput(
            f"Table {table.name!r} has DELETE trigger(s) {', '.join(repr(n) for n in names)}",
            "they would fire for every archived row as if the application had deleted it",
            "drop them for the run and recreate them afterwards, or archive another way; nothing was written",
        )


def _refuse_cutoff(con: sqlite3.Connection, src: Source, before: str) -> None:
    """BadInput for an empty cutoff, or a non-ISO one against a column of ISO-8601 text."""
    if not before.strip():
        raise BadInput(
            "The cutoff is empty",
            f"rows move when {src.column} < the cutoff",
            "pass a date such as '2024-01-01'; nothing was written",
        )
    sample = con.execute(
        f"SELECT {quote_ident(src.column)} FROM {quote_ident(src.name)} "
        f"WHERE {quote_ident(src.column)} IS NOT NULL LIMIT 1"
    ).fetchone()
    if not (sample and isinstance(sample[0], str) and _is_iso(sample[0])):
        return
    value = sample[0]
    if not _is_iso(before):
        raise BadInput(
            f"The cutoff {before!r} is not an ISO-8601 date",
            f"{src.column} holds ISO-8601 text such as {value!r}, and text compares character by character",
            "write the cutoff like '2024-01-01' or '2024-01-01 00:00:00'; nothing was written",
        )
    if len(before) > 10 and len(value) > 10 and before[10] != value[10]:
        raise BadInput(
            f"The cutoff {before!r} separates date and time otherwise than {src.column}",
            f"{src.column} holds text such as {value!r}, and text compares character by character",
            f"write the cutoff as {before[:10] + value[10] + before[11:]!r}; nothing was written",
        )


def _is_iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _check_paths(database: Path, archive: Path) -> None:
    """BadInput for a missing database, an archive that is the database, or a bad archive path."""
    check_is_sqlite_file(database)
    if archive.resolve() == database.resolve() or (archive.exists() and archive.samefile(database)):
        raise BadInput(
            f"The archive {archive} is the database itself",
            "archiving copies rows into another file, then deletes them from the database",
            "pass another path for the archive, such as worklogs-archive.db; nothing was written",
        )
    if not archive.parent.is_dir():
        raise BadInput(
            f"The archive's directory {archive.parent} does not exist",
            "liteshift creates the archive file, not its directory",
            "create the directory or pass another archive path; nothing was written",
        )
    if archive.exists() and (not archive.is_file() or not _has_sqlite_header(archive)):
        raise BadInput(
            f"The archive {archive} is not a SQLite database",
            "it is a directory, or its first bytes are not the SQLite file header",
            "pass the path of an earlier archive or of a new file; nothing was written",
        )


def _has_sqlite_header(path: Path) -> bool:
    """True for an empty file (SQLite starts it) or one that starts with the SQLite header."""
    with path.open("rb") as fh:
        head = fh.read(len(SQLITE_HEADER))
    return head in (b"", SQLITE_HEADER)


def _archived_sql(con: sqlite3.Connection, name: str, schema: str = "main") -> str | None:
    """The archive's CREATE TABLE of that name, if it has one."""
    row = con.execute(
        f"SELECT sql FROM {schema}.sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE", (name,)
    ).fetchone()
    return None if row is None else str(row[0])


def _same_definition(a: str, b: str) -> bool:
    return " ".join(strip_comments(a).split()) == " ".join(strip_comments(b).split())


def _refuse_other_definition(src: Source, archived: str | None, archive: Path) -> None:
    """BadInput when the archive's table of that name is defined otherwise."""
    if archived is not None and not _same_definition(archived, src.table.sql):
        raise BadInput(
            f"Table {src.name!r} in the archive {archive.name} has another definition",
            "its CREATE TABLE differs from the live table's (a migration changed one of them)",
            "archive into a new file, or give the archive's table the live definition first; "
            "nothing was written",
        )


def _check_existing_archive(archive: Path, src: Source, timeout_ms: int) -> None:
    """Read-only look at an existing archive: its table must be the live one's."""
    if not archive.exists() or archive.stat().st_size == 0:
        return
    with _opened(archive, timeout_ms, readonly=True) as con:
        _refuse_other_definition(src, _archived_sql(con, src.name), archive)


# ---------------------------------------------------------------------------------------------
# SQL pieces


def _cols(names: Sequence[str], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + quote_ident(c) for c in names)


def _tuple(names: Sequence[str], alias: str = "") -> str:
    """A column or a row value, for comparisons that work for one key column and for several."""
    inner = _cols(names, alias)
    return inner if len(names) == 1 else f"({inner})"


def _marks(count: int) -> str:
    return "?" if count == 1 else "(" + ", ".join("?" for _ in range(count)) + ")"


def _match(key: Sequence[str], a: str, b: str) -> str:
    return " AND ".join(f"{a}.{quote_ident(k)} = {b}.{quote_ident(k)}" for k in key)


def _identical(cols: Sequence[str], a: str, b: str) -> str:
    """Every column the same value of the same type, NULL-safe, whatever the column's collation."""
    parts = []
    for c in map(quote_ident, cols):
        parts.append(f"{a}.{c} IS {b}.{c} COLLATE BINARY AND typeof({a}.{c}) = typeof({b}.{c})")
    return " AND ".join(parts)


def _pending_keys(src: Source) -> str:
    return ", ".join(f"k{i}" for i in range(len(src.key)))


def _top_rule(con: sqlite3.Connection, src: Source, schema: str) -> tuple[str, tuple[object, ...]]:
    """Keep the row with the highest rowid: SQLite numbers a new row max(rowid) + 1, so deleting it
    would hand an archived row's key to the next insert. (condition on alias l, its parameter)

    The maximum is read first and bound: written as a subquery, the planner took it for the key
    range's upper bound and every batch scanned to the end of the table.
    """
    if not src.keeps_top:
        return "", ()
    k = quote_ident(src.key[0])
    top = con.execute(f"SELECT max({k}) FROM {schema}.{quote_ident(src.name)}").fetchone()[0]
    return f" AND l.{k} < ?", (top,)


def _encode(values: Sequence[object]) -> str:
    """A key as JSON text (blobs as hex)."""
    return json.dumps([{"blob": v.hex()} if isinstance(v, bytes) else v for v in values])


def _decode(text: str) -> tuple[object, ...]:
    return tuple(bytes.fromhex(v["blob"]) if isinstance(v, dict) else v for v in json.loads(text))


def _row_hash(row: Sequence[object]) -> int:
    """A row's SHA-256 as an integer; repr keeps 1, 1.0, '1' and b'1' apart."""
    return int.from_bytes(hashlib.sha256(repr(tuple(row)).encode()).digest(), "big")


# ---------------------------------------------------------------------------------------------
# The archive file: table, progress, owner


def _prepare(run: _Run) -> bool:
    """Create the archive's table and bookkeeping, take ownership; True when pending keys remain."""
    arc, src = run.arc, run.src
    try:
        with write_transaction(arc, run.archive, run.timeout_ms):
            archived = _archived_sql(arc, src.name)
            _refuse_other_definition(src, archived, run.archive)
            if archived is None:
                arc.execute(src.table.sql)  # the live text itself: same columns, types and constraints
            arc.execute(PROGRESS_DDL)
            arc.execute(f"CREATE TABLE IF NOT EXISTS {src.pending} ({_pending_keys(src)})")
            _take_ownership(run)
    except sqlite3.Error as exc:
        raise BadInput(
            f"The archive {run.archive} could not be prepared",
            failure_detail(exc, src.table.sql),
            "check the archive path and its disk; the database was not changed",
        ) from exc
    return arc.execute(f"SELECT 1 FROM {src.pending} LIMIT 1").fetchone() is not None


def _take_ownership(run: _Run) -> None:
    """Refuse when another live run owns this table's progress; else own it and load the position."""
    row = run.arc.execute(
        f"SELECT column_name, before, position, last, host, pid, heartbeat FROM {PROGRESS} "
        "WHERE table_name = ?",
        (run.src.name,),
    ).fetchone()
    me = (socket.gethostname(), os.getpid())
    if row is not None and row[5] is not None and (row[4], row[5]) != me and _alive(row[4], row[5], row[6]):
        raise BadInput(
            f"Another archive run of {run.src.name!r} into {run.archive.name} is in progress "
            f"(pid {row[5]} on {row[4]})",
            "two runs would fight over the same batches",
            "wait for it to finish, or stop that process and run again; nothing was written",
        )
    same_pass = row is not None and (row[0], row[1]) == (run.src.column, run.before)
    run.position = _decode(row[2]) if same_pass and row[2] else None
    # Another column or cutoff starts a new pass; the pending keys it left are settled all the same.
    run.arc.execute(
        f"INSERT OR REPLACE INTO {PROGRESS} (table_name, column_name, before, position, last, host, pid, "
        "heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run.src.name,
            run.src.column,
            run.before,
            row[2] if same_pass else None,
            int(same_pass and bool(row[3])),
            *me,
            time.time(),
        ),
    )


def _alive(host: str, pid: int, heartbeat: float) -> bool:
    """Whether a run that owns a progress row may still be going."""
    if time.time() - heartbeat > STALE_AFTER_S:
        return False
    return host != socket.gethostname() or pid_alive(pid)


def _release(run: _Run) -> None:
    """Leave the position for the next run, without an owner (if this run owns it)."""
    with write_transaction(run.arc, run.archive, run.timeout_ms):
        run.arc.execute(
            f"UPDATE {PROGRESS} SET host = NULL, pid = NULL, heartbeat = ? "
            "WHERE table_name = ? AND host = ? AND pid = ?",
            (time.time(), run.src.name, socket.gethostname(), os.getpid()),
        )


# ---------------------------------------------------------------------------------------------
# One batch: copy, delete, settle


def _copy_batch(run: _Run) -> tuple[bool, int]:
    """Copy the next rows into the archive and note their keys as pending; (at the table's end, pending)."""
    try:
        with write_transaction(run.arc, run.archive, run.timeout_ms):
            copied, pending, in_range, bound = _copy_in_transaction(run)
    except sqlite3.IntegrityError as exc:
        raise CheckFailed(
            f"Rows of {run.src.name!r} cannot go into the archive {run.archive.name}",
            f"{exc}: an archived row holds the same UNIQUE value as a live row",
            f"change the conflicting rows, or archive into a new file; this batch was not written, the "
            f"{run.result.deleted} rows moved before it are in the archive",
        ) from exc
    except sqlite3.OperationalError as exc:
        if "full" not in str(exc).lower():
            raise
        raise BadInput(
            f"The archive {run.archive} is full",
            str(exc),
            f"free space on its disk (or pass another archive file) and run again: it resumes; this batch "
            f"was not written, the {run.result.deleted} rows moved before it are in the archive",
        ) from exc
    if bound is not None:
        run.position = bound
    run.result.copied += copied
    run.result.key_conflicts += in_range - pending
    run.result.batches += 1
    run.handled += in_range
    return bound is None, pending


def _copy_in_transaction(run: _Run) -> tuple[int, int, int, tuple[object, ...] | None]:
    """The copy's statements inside the archive's write transaction, the live file read in one
    snapshot; (rows copied, rows pending, old rows in the batch's range, the range's upper key)."""
    src, arc, n = run.src, run.arc, run.throttle.rows
    table, key = quote_ident(src.name), src.key
    lower = f"{_tuple(key, 'l')} > {_marks(len(key))}" if run.position is not None else "1"
    # NOT INDEXED: walk the key range; an index on the column would make each batch sort all old rows.
    source = f"{LIVE}.{table} AS l NOT INDEXED"
    where = f"{lower} AND l.{quote_ident(src.column)} < ?"
    params: tuple[object, ...] = (*(run.position or ()), run.before)
    cap, cap_params = _top_rule(arc, src, LIVE)
    row = arc.execute(
        f"SELECT {_cols(key, 'l')} FROM {source} WHERE {where}{cap} ORDER BY {_cols(key, 'l')} "
        "LIMIT 1 OFFSET ?",
        (*params, *cap_params, n - 1),
    ).fetchone()
    bound = None if row is None else tuple(row)
    if bound is not None:  # one upper bound only: the planner ranges over one of them
        where += f" AND {_tuple(key, 'l')} <= {_marks(len(key))}"
        params += bound
    else:
        where += cap
        params += cap_params
    copied = arc.execute(
        f"INSERT INTO main.{table} ({_cols(src.targets)}) SELECT {_cols(src.targets, 'l')} FROM {source} "
        f"WHERE {where} AND NOT EXISTS (SELECT 1 FROM main.{table} AS a WHERE {_match(key, 'a', 'l')})",
        params,
    ).rowcount
    # Pending: the batch's rows the archive now holds identically (just copied, or an identical copy
    # a lost delete left behind). A different row under the same key is not touched: it stays live.
    pending = arc.execute(
        f"INSERT INTO main.{src.pending} ({_pending_keys(src)}) SELECT {_cols(key, 'l')} FROM {source} "
        f"WHERE {where} AND EXISTS (SELECT 1 FROM main.{table} AS a WHERE {_match(key, 'a', 'l')} AND "
        f"{_identical(src.targets, 'a', 'l')})",
        params,
    ).rowcount
    if bound is not None:
        in_range = n
    else:
        in_range = int(arc.execute(f"SELECT count(*) FROM {source} WHERE {where}", params).fetchone()[0])
    position = bound if bound is not None else run.position
    arc.execute(
        f"UPDATE {PROGRESS} SET position = ?, last = ?, heartbeat = ? WHERE table_name = ?",
        (None if position is None else _encode(position), int(bound is None), time.time(), src.name),
    )
    return copied, pending, in_range, bound


def _delete_batch(run: _Run) -> tuple[set[tuple[object, ...]], Held]:
    """Delete the pending rows still identical to their copy, in one live write transaction."""
    src = run.src
    table = quote_ident(src.name)
    with write_transaction(run.live, run.database, run.timeout_ms) as held:
        _check_schema(run)
        cap, cap_params = _top_rule(run.live, src, "main")  # read under the lock: no insert can follow
        rows = run.live.execute(
            f"DELETE FROM main.{table} AS l WHERE {_tuple(src.key, 'l')} IN "
            f"(SELECT {_pending_keys(src)} FROM {ARCHIVE}.{src.pending}){cap} "
            f"AND EXISTS (SELECT 1 FROM {ARCHIVE}.{table} AS a WHERE {_match(src.key, 'a', 'l')} AND "
            f"{_identical(src.targets, 'a', 'l')}) RETURNING {_cols(src.targets)}",
            cap_params,
        ).fetchall()
    run.result.longest_txn_seconds = max(run.result.longest_txn_seconds, held.held)
    run.result.deleted += len(rows)
    at = [src.targets.index(k) for k in src.key]
    moved = [(*(r[i] for i in at), f"{_row_hash(r):064x}") for r in rows]
    _note_moved(run, moved)
    faults.point("archive-deleted")
    return {m[:-1] for m in moved}, held


def _note_moved(run: _Run, moved: list[tuple[object, ...]]) -> None:
    """Keep each deleted row's key and hash in a TEMP table of the archive connection, for the
    verification at the end (memory stays flat however many rows move)."""
    marks = ", ".join("?" for _ in range(len(run.src.key) + 1))
    run.arc.execute("BEGIN")  # only temp is written: no lock on the archive
    run.arc.executemany(f"INSERT OR REPLACE INTO temp.liteshift_moved VALUES ({marks})", moved)
    run.arc.execute("COMMIT")


def _check_schema(run: _Run) -> None:
    """Inside the delete's transaction: re-check the live schema if it changed since the start."""
    version = int(run.live.execute("PRAGMA main.schema_version").fetchone()[0])
    if version == run.schema_version:
        return
    try:
        now = _inspect(run.live, run.database, run.src.name, run.src.column, run.before)
    except BadInput as exc:  # a refusal, now that earlier batches may have moved rows
        moved = f"the {run.result.deleted} rows moved before this batch are in {run.archive.name}"
        raise BadInput(exc.what, exc.why, exc.hint.replace("nothing was written", moved)) from exc
    if not _same_definition(now.table.sql, run.src.table.sql):
        raise CheckFailed(
            f"The definition of {run.src.name!r} changed during archiving",
            "the archive's table keeps the definition the run started with",
            f"the rows moved so far are in {run.archive.name}; archive the rest into a new file",
        )
    run.schema_version = version


def _settle(run: _Run, deleted: set[tuple[object, ...]] | None, last: bool) -> None:
    """Remove the copies of the pending rows that were not deleted, clear the pending keys, and end
    the pass after its last batch. deleted None (after a crash): a pending key absent from the live
    table counts as deleted (by the killed run, or by the application: its copy then stays)."""
    src, arc = run.src, run.arc
    keys = _pending_keys(src)
    with write_transaction(arc, run.archive, run.timeout_ms):
        if deleted is None:
            on_key = " AND ".join(f"l.{quote_ident(k)} = p.k{i}" for i, k in enumerate(src.key))
            kept = arc.execute(
                f"SELECT {keys} FROM main.{src.pending} AS p WHERE EXISTS "
                f"(SELECT 1 FROM {LIVE}.{quote_ident(src.name)} AS l WHERE {on_key})"
            ).fetchall()
        else:
            kept = [
                k for k in arc.execute(f"SELECT {keys} FROM main.{src.pending}") if tuple(k) not in deleted
            ]
        table, match = quote_ident(src.name), f"{_tuple(src.key)} = {_marks(len(src.key))}"
        arc.executemany(f"DELETE FROM main.{table} WHERE {match}", kept)
        arc.execute(f"DELETE FROM main.{src.pending}")
        if last:
            arc.execute(f"DELETE FROM {PROGRESS} WHERE table_name = ?", (src.name,))
    run.result.kept_changed += len(kept)
    faults.point("archive-cleaned")


def _delete_and_settle(run: _Run, crashed: bool, last: bool) -> None:
    """Delete the pending batch's rows, then settle it; the throttle pauses after."""
    try:
        deleted, held = _delete_batch(run)
    except (BadInput, CheckFailed):
        _settle(run, None, False)  # nothing of the batch was deleted now: copies of live rows go
        raise
    _settle(run, None if crashed else deleted, last)
    run.throttle.after(held, run.live)


def _run_pass(run: _Run, pending: bool, deadline: float | None, on_progress: Progress | None) -> None:
    """Settle what a killed run left, then batch on until the end of the table or the deadline."""
    if pending:
        row = run.arc.execute(f"SELECT last FROM {PROGRESS} WHERE table_name = ?", (run.src.name,)).fetchone()
        last = bool(row and row[0])
        _delete_and_settle(run, crashed=True, last=last)
        run.result.batches += 1
        if last:
            return
    while True:
        if deadline is not None and time.time() >= deadline:
            run.result.stopped_early = True
            return
        last, pending_rows = _copy_batch(run)
        faults.point("archive-copied")
        if pending_rows:
            _delete_and_settle(run, crashed=False, last=last)
        else:
            _settle(run, set(), last)
        total = max(run.total, run.handled)
        tell(
            on_progress,
            Tick(
                f"archive {run.src.name}", total if last else run.handled, total, database=str(run.database)
            ),
        )
        if last:
            return


# ---------------------------------------------------------------------------------------------
# Afterwards: verify, reclaim


def _verify(run: _Run) -> None:
    """Every row deleted this run is in the archive, identical: count and digest; CheckFailed if not."""
    src = run.src
    on_key = " AND ".join(f"a.{quote_ident(k)} = m.k{i}" for i, k in enumerate(src.key))
    rows = run.arc.execute(
        f"SELECT m.h, a.{quote_ident(src.key[0])} IS NOT NULL, {_cols(src.targets, 'a')} "
        f"FROM temp.liteshift_moved AS m LEFT JOIN main.{quote_ident(src.name)} AS a ON {on_key}"
    )
    moved = found = 0
    live_sum = archive_sum = 0
    for h, present, *values in rows:
        moved += 1
        live_sum += int(h, 16)
        if present:
            found += 1
            archive_sum += _row_hash(values)
    live_sum, archive_sum = live_sum % 2**256, archive_sum % 2**256
    if found != moved or live_sum != archive_sum:
        why = f"{moved} rows deleted, {found} found in the archive"
        if found == moved:
            why += f"; their digests differ ({live_sum:064x} deleted, {archive_sum:064x} archived)"
        raise CheckFailed(
            f"The archive {run.archive.name} does not hold every row deleted from {src.name!r} as it was",
            why,
            "keep the archive file as it is and compare it with your last backup of the database",
        )
    run.result.verified = True
    run.result.digest = f"{live_sum:064x}"


def _reclaim(run: _Run, deadline: float | None) -> int:
    """With auto_vacuum=INCREMENTAL, give the free pages back in short transactions; bytes freed."""
    live = run.live
    if int(live.execute("PRAGMA main.auto_vacuum").fetchone()[0]) != 2:
        return 0  # NONE: the pages stay free for reuse (only VACUUM shrinks the file); FULL: done at COMMIT
    size = int(live.execute("PRAGMA main.page_size").fetchone()[0])
    start = free = int(live.execute("PRAGMA main.freelist_count").fetchone()[0])
    pages = Throttle(
        budget_s=run.throttle.budget_s,
        rows=256,
        min_rows=16,
        max_rows=50_000,
        wal_limit_mb=run.throttle.wal_limit_mb,
    )
    while free > 0 and (deadline is None or time.time() < deadline):
        with write_transaction(live, run.database, run.timeout_ms) as held:
            # Python steps a PRAGMA once: each call frees one page (executescript would COMMIT).
            for _ in range(min(pages.rows, free)):
                live.execute("PRAGMA main.incremental_vacuum")
        run.result.longest_txn_seconds = max(run.result.longest_txn_seconds, held.held)
        now = int(live.execute("PRAGMA main.freelist_count").fetchone()[0])
        if now >= free:
            break
        free = now
        pages.after(held, live)
    return (start - free) * size


# ---------------------------------------------------------------------------------------------
# Public API


def _read_live(
    con: sqlite3.Connection, database: Path, table: str, column: str, before: str
) -> tuple[Source, int, int]:
    """(the table, the schema version, its rows older than the cutoff), in one read snapshot."""
    con.execute("BEGIN")
    try:
        src = _inspect(con, database, table, column, before)
        version = int(con.execute("PRAGMA main.schema_version").fetchone()[0])
        old = _count_old(con, src, before)
    finally:
        con.execute("COMMIT")
    return src, version, old


def _setup_archive(arc: sqlite3.Connection, database: Path, src: Source) -> None:
    """WAL with a synced COMMIT: a copy is on disk before the live delete it allows."""
    arc.execute("PRAGMA journal_mode = WAL")
    arc.execute("PRAGMA synchronous = FULL")
    arc.execute("PRAGMA foreign_keys = OFF")  # the archived rows' parents stay in the live file
    _attach_readonly(arc, database, LIVE)
    keys = _pending_keys(src)
    arc.execute(f"CREATE TEMP TABLE liteshift_moved ({keys}, h TEXT NOT NULL, PRIMARY KEY ({keys}))")


def archive_rows(
    database: Path,
    archive: Path,
    table: str,
    column: str,
    before: str,
    *,
    timeout_ms: int = 5000,
    budget_s: float = 0.005,
    wal_limit_mb: float = 256.0,
    batch_rows: int | None = None,
    deadline: float | None = None,
    on_progress: Progress | None = None,
) -> ArchiveResult:
    """Move the rows of `table` with `column < before` into `archive`, in short batches; resumable.

    budget_s: each live delete transaction is sized to hold the write lock about this long (then
    liteshift pauses as long); batch_rows fixes the batch size instead. wal_limit_mb: the WAL bound
    (Throttle.bound_wal). deadline (a time.time()
    value): no batch starts after it. Refusals are BadInput raised before anything is written.
    """
    started = time.perf_counter()
    database, archive = Path(database), Path(archive)
    _check_paths(database, archive)
    with _opened(database, timeout_ms) as live:
        live.execute("PRAGMA foreign_keys = OFF")  # never cascade; tables others point to are refused
        src, version, old = _read_live(live, database, table, column, before)
        _check_existing_archive(archive, src, timeout_ms)
        result = ArchiveResult(src.name, src.column, before, str(archive))
        throttle = Throttle(budget_s=budget_s, rows=batch_rows or 2000, wal_limit_mb=wal_limit_mb)
        if batch_rows is not None:  # fixed size: the pause after each batch stays
            throttle.min_rows = throttle.max_rows = batch_rows
        with _opened(archive, timeout_ms) as arc:
            run = _Run(live, arc, database, archive, src, before, timeout_ms, throttle, result, version)
            run.total = max(1, old)
            _move(run, deadline, on_progress)
            _verify(run)
            faults.point("archive-verified")
        result.freed_bytes = _reclaim(run, deadline)
        result.remaining = _count_old(live, src, before)
    result.seconds = time.perf_counter() - started
    return result


def _move(run: _Run, deadline: float | None, on_progress: Progress | None) -> None:
    """Prepare the archive and run the pass; the live connection sees the archive only meanwhile."""
    _setup_archive(run.arc, run.database, run.src)
    try:
        pending = _prepare(run)
        faults.point("archive-prepared")
        _attach_readonly(run.live, run.archive, ARCHIVE)
        try:
            with run.throttle.writing(run.live):
                _run_pass(run, pending, deadline, on_progress)
        finally:
            # At once: the archive connection, closing last, then folds the archive's -wal back in and
            # removes it (a copied archive file without its -wal would miss rows).
            run.live.execute(f"DETACH DATABASE {ARCHIVE}")
    finally:
        _release_quietly(run)


def _count_old(con: sqlite3.Connection, src: Source, before: str) -> int:
    """Rows of the live table older than the cutoff."""
    sql = f"SELECT count(*) FROM main.{quote_ident(src.name)} WHERE {quote_ident(src.column)} < ?"
    return int(con.execute(sql, (before,)).fetchone()[0])


def _release_quietly(run: _Run) -> None:
    """Release ownership on the way out, even after a failure (a failed release changes nothing)."""
    with suppress(sqlite3.Error, BadInput):
        _release(run)


@dataclass(frozen=True)
class ArchivePlan:
    """What a run would move, read without writing (plan_archive)."""

    table: str
    column: str
    before: str
    rows: int  # rows older than the cutoff that a run moves
    table_rows: int
    top_row_kept: int  # the highest rowid stays, so SQLite never reuses an archived key
    oldest: object
    newest: object
    key: list[str]
    without_rowid: bool
    bytes_estimate: int | None  # the table's and its indexes' pages, times the share of rows moved
    bytes_method: str
    auto_vacuum: str | None
    reclaims_free_pages: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def plan_archive(database: Path, table: str, column: str, before: str) -> ArchivePlan:
    """Read-only: what a run would move (rows, oldest and newest value, bytes from dbstat) or BadInput."""
    database = Path(database)
    check_is_sqlite_file(database)
    with _opened(database, 5000, readonly=True) as con:
        con.execute("BEGIN")
        src = _inspect(con, database, table, column, before)
        t, c = quote_ident(src.name), quote_ident(src.column)
        total = int(con.execute(f"SELECT count(*) FROM main.{t}").fetchone()[0])
        old, oldest, newest = con.execute(
            f"SELECT count(*), min({c}), max({c}) FROM main.{t} WHERE {c} < ?", (before,)
        ).fetchone()
        cap, cap_params = _top_rule(con, src, "main")
        rows = int(
            con.execute(
                f"SELECT count(*) FROM main.{t} AS l WHERE l.{c} < ?{cap}", (before, *cap_params)
            ).fetchone()[0]
        )
        size = _dbstat_bytes(con, src.name)
        vacuum = {0: "none", 1: "full", 2: "incremental"}.get(
            int(con.execute("PRAGMA auto_vacuum").fetchone()[0])
        )
        con.execute("COMMIT")
    return ArchivePlan(
        table=src.name,
        column=src.column,
        before=before,
        rows=rows,
        table_rows=total,
        top_row_kept=int(old) - rows,
        oldest=oldest,
        newest=newest,
        key=list(src.key),
        without_rowid=src.table.without_rowid,
        bytes_estimate=None if size is None else size * rows // max(1, total),
        bytes_method="unavailable (no dbstat)" if size is None else "dbstat: table and its indexes x share",
        auto_vacuum=vacuum,
        reclaims_free_pages=vacuum == "incremental",
    )


def _dbstat_bytes(con: sqlite3.Connection, table: str) -> int | None:
    """Bytes of the table's and its indexes' pages, or None without the dbstat table."""
    names = [table] + [r[1] for r in con.execute(f"PRAGMA index_list({quote_ident(table)})")]
    marks = ", ".join("?" for _ in names)
    try:
        row = con.execute(
            f"SELECT sum(pgsize) FROM dbstat WHERE aggregate = TRUE AND name IN ({marks})", names
        ).fetchone()
    except sqlite3.OperationalError:
        return None
    return int(row[0] or 0)
