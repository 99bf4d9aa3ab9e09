"""Connections and small read-only queries over a SQLite database file."""

from __future__ import annotations

import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from liteshift.core.errors import BadInput, DatabaseLocked
from liteshift.core.sql import quote_ident

SQLITE_HEADER = b"SQLite format 3\x00"
CORRUPT_HINT = (
    "restore the database from your last good backup or run "
    "'sqlite3 DB .recover'; liteshift will not migrate a damaged file"
)
INTERNAL_PREFIXES = ("sqlite_", "liteshift_")


def is_locked_error(exc: BaseException) -> bool:
    """True for the transient 'database is locked / busy' family of errors."""
    if isinstance(exc, DatabaseLocked):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "locked" in text or "busy" in text
    return False


def check_is_sqlite_file(path: Path) -> None:
    """Refuse a missing, empty or non-SQLite file before SQLite ever opens it."""
    if not path.exists():
        raise BadInput(
            f"Database {path} does not exist",
            "there is no file at that path",
            "check the --database path (liteshift never creates the database it migrates)",
        )
    if not path.is_file():
        raise BadInput(
            f"Database {path} is not a file",
            "it is a directory or a device",
            "point --database at the .db file itself",
        )
    try:
        with path.open("rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except PermissionError as exc:
        raise BadInput(
            f"Database {path} cannot be read",
            str(exc),
            "run liteshift as a user that can read and write the file",
        ) from exc
    if header != SQLITE_HEADER:
        raise BadInput(
            f"{path} is not a SQLite database",
            "its first bytes are not the SQLite file header",
            "check the --database path; liteshift only migrates SQLite 3 files",
        )


def connect(
    path: Path | str,
    busy_timeout_ms: int = 5000,
    readonly: bool = False,
    immutable: bool = False,
    uri: bool = False,
) -> sqlite3.Connection:
    """Open a connection in autocommit mode: the caller issues BEGIN/COMMIT itself.

    immutable: read a file nothing writes (a finished backup) without locks or a -shm file.
    uri: read-write, opened by URI so that ATTACH takes URIs too (attach_immutable).
    """
    if uri:
        con = sqlite3.connect(_uri(path), uri=True, isolation_level=None, timeout=busy_timeout_ms / 1000)
    elif immutable:
        con = sqlite3.connect(f"{_uri(path)}?mode=ro&immutable=1", uri=True, isolation_level=None)
    elif readonly:
        target = f"{_uri(path)}?mode=ro"
        con = sqlite3.connect(target, uri=True, isolation_level=None, timeout=busy_timeout_ms / 1000)
    else:
        con = sqlite3.connect(str(path), isolation_level=None, timeout=busy_timeout_ms / 1000)
    con.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    return con


def _uri(path: Path | str) -> str:
    """A file: URI of path; '?', '#' and '%' in a name would otherwise open another file."""
    return "file:" + urllib.parse.quote(str(Path(path).resolve()))


def attach_immutable(con: sqlite3.Connection, path: Path | str, schema: str) -> None:
    """ATTACH a file nothing writes (a finished backup) read-only, without locks (uri=True only)."""
    con.execute(f"ATTACH DATABASE ? AS {schema}", (f"{_uri(path)}?mode=ro&immutable=1",))


@contextmanager
def connection(
    path: Path | str,
    busy_timeout_ms: int = 5000,
    readonly: bool = False,
    immutable: bool = False,
    uri: bool = False,
) -> Iterator[sqlite3.Connection]:
    """A connection that is always closed, and never left inside a transaction."""
    con = connect(path, busy_timeout_ms, readonly, immutable, uri)
    try:
        yield con
    finally:
        if con.in_transaction:
            con.execute("ROLLBACK")
        con.close()


def begin_immediate(con: sqlite3.Connection, path: Path | str, timeout_ms: int) -> None:
    """Take the write lock, or raise DatabaseLocked naming the timeout."""
    try:
        con.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if is_locked_error(exc):
            raise DatabaseLocked(
                f"Database {path} is locked",
                f"another connection held the write lock for more than {timeout_ms} ms",
                "find the writer (a long transaction or a stuck process) or raise --busy-timeout, "
                "then run again; nothing was written",
            ) from exc
        raise


@dataclass
class Held:
    """How long a write transaction waited for the lock and then held it, in seconds."""

    waited: float = 0.0
    held: float = 0.0  # from the lock to the end of COMMIT
    work: float = 0.0  # from the lock to the end of the block (COMMIT's sync excluded)


@contextmanager
def relaxed_sync(con: sqlite3.Connection) -> Iterator[None]:
    """synchronous=NORMAL for the block when the database is in WAL mode, then back.

    In WAL mode NORMAL skips the sync at each COMMIT and stays consistent after a power loss,
    which may only undo the last transactions. For work that resumes from what was committed (an
    online rebuild's copy) that is safe, and it takes a fixed cost off every short transaction.
    """
    before = con.execute("PRAGMA synchronous").fetchone()[0]
    wal = journal_mode(con) == "wal"
    if wal:
        con.execute("PRAGMA synchronous = NORMAL")
    try:
        yield
    finally:
        if wal:
            con.execute(f"PRAGMA synchronous = {int(before)}")


@contextmanager
def own_checkpoints(con: sqlite3.Connection) -> Iterator[None]:
    """SQLite's automatic checkpoint off on this connection for the block, in WAL mode, then back.

    A COMMIT that leaves the WAL past 1,000 pages runs a checkpoint before it returns, so a batch's
    measured lock hold counted that checkpoint too (about 14 ms of each liteshift batch at 1M rows,
    paused for again), and the application's next COMMIT ran the checkpoint whenever liteshift's
    did not. The block checkpoints itself instead, right after each COMMIT (Throttle.after); the
    last PASSIVE checkpoint here leaves nothing of the block's for the application's commits.
    """
    wal = journal_mode(con) == "wal"
    before = int(con.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    if wal:
        con.execute("PRAGMA wal_autocheckpoint = 0")
    try:
        yield
    finally:
        if wal:
            con.execute(f"PRAGMA wal_autocheckpoint = {before}")
            if not con.in_transaction:
                con.execute("PRAGMA main.wal_checkpoint(PASSIVE)")


@contextmanager
def write_transaction(con: sqlite3.Connection, path: Path | str, timeout_ms: int) -> Iterator[Held]:
    """BEGIN IMMEDIATE ... COMMIT around the block; ROLLBACK and re-raise when it fails."""
    times = Held()
    start = time.perf_counter()
    begin_immediate(con, path, timeout_ms)
    locked = time.perf_counter()
    times.waited = locked - start
    try:
        yield times
        times.work = time.perf_counter() - locked
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        times.held = time.perf_counter() - locked


def table_exists(con: sqlite3.Connection, table: str) -> bool:
    """True when the schema has a table of that name (SQLite compares names without case)."""
    sql = "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE"
    return con.execute(sql, (table,)).fetchone() is not None


def user_tables(con: sqlite3.Connection) -> list[str]:
    """Names of the user's tables (not SQLite's nor liteshift's own)."""
    rows = con.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name").fetchall()
    return [r[0] for r in rows if not r[0].startswith(INTERNAL_PREFIXES)]


def row_counts(con: sqlite3.Connection, tables: list[str] | None = None) -> dict[str, int]:
    """Rows per user table, read in whatever transaction the connection is in."""
    names = user_tables(con) if tables is None else tables
    return {t: con.execute(f"SELECT count(*) FROM {quote_ident(t)}").fetchone()[0] for t in names}


def fingerprint(con: sqlite3.Connection) -> dict[str, list[int]]:
    """Per user table: [row count, max rowid] (-1 for WITHOUT ROWID); shows inserts and deletes."""
    result = {}
    for table in user_tables(con):
        count = con.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()[0]
        try:
            top = con.execute(f"SELECT max(rowid) FROM {quote_ident(table)}").fetchone()[0] or 0
        except sqlite3.OperationalError:
            top = -1
        result[table] = [int(count), int(top)]
    return result


def pragma_check(con: sqlite3.Connection, pragma: str, table: str | None = None) -> list[str]:
    """Run quick_check / integrity_check; return the problems (empty when 'ok')."""
    arg = f"({quote_ident(table)})" if table else ""
    rows = [r[0] for r in con.execute(f"PRAGMA {pragma}{arg}")]
    return [] if rows == ["ok"] else rows


def foreign_key_problems(con: sqlite3.Connection) -> list[tuple[str, int, str, int]]:
    """Rows of PRAGMA foreign_key_check: (table, rowid, parent, fk id)."""
    return [tuple(r) for r in con.execute("PRAGMA foreign_key_check")]


def journal_mode(con: sqlite3.Connection) -> str:
    """The database's journal mode (wal, delete, truncate, ...)."""
    return str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower()


def page_bytes(con: sqlite3.Connection) -> int:
    """Logical size of the database: page_count x page_size (includes committed WAL pages)."""
    count = con.execute("PRAGMA page_count").fetchone()[0]
    size = con.execute("PRAGMA page_size").fetchone()[0]
    return int(count) * int(size)


def table_bytes(con: sqlite3.Connection, table: str) -> int:
    """Bytes of a table's pages and its indexes' (dbstat); the whole file when dbstat is missing."""
    names = [table] + [r[1] for r in con.execute(f"PRAGMA index_list({quote_ident(table)})")]
    try:
        marks = ", ".join("?" for _ in names)
        row = con.execute(
            f"SELECT sum(pgsize) FROM dbstat WHERE aggregate = TRUE AND name IN ({marks})", names
        ).fetchone()
        return int(row[0] or 0)
    except sqlite3.OperationalError:  # no dbstat in this build: count the whole file
        return page_bytes(con)


def backup_pages(
    src: sqlite3.Connection, dst: sqlite3.Connection, during: Callable[[], None] | None = None
) -> None:
    """Copy every page of src into dst with SQLite's online backup API, in one step.

    One step, because a stepped backup restarts whenever another connection writes the source
    and, under a steady writer, never finishes. `during` is called once, after the pages are
    written and before the copy is finished (the fault-injection suite kills a run there).
    """
    src.backup(dst, pages=-1, progress=(lambda *_: during()) if during else None)


def copy_to_new_file(
    src: sqlite3.Connection, target: Path, during: Callable[[], None] | None = None, label: str = "copy"
) -> None:
    """Copy a database into a new file, unjournaled and unsynced: a broken copy is thrown away.

    The caller fsyncs what it keeps. A full disk becomes BadInput naming the file.
    """
    dst = sqlite3.connect(str(target), isolation_level=None)
    try:
        dst.execute("PRAGMA journal_mode = OFF")
        dst.execute("PRAGMA synchronous = OFF")
        backup_pages(src, dst, during)
    except sqlite3.OperationalError as exc:
        if "full" in str(exc).lower() or "disk" in str(exc).lower():
            raise BadInput(
                f"The {label} {target.name} could not be written",
                str(exc),
                "free space in the backup directory or pass another --backup-dir; "
                "the database was not changed",
            ) from exc
        raise
    finally:
        dst.close()


def free_page_bytes(database: Path) -> int:
    """Bytes of the database's free pages (freelist_count x page_size)."""
    with connection(database) as con:
        free = con.execute("PRAGMA freelist_count").fetchone()[0]
        size = con.execute("PRAGMA page_size").fetchone()[0]
        return int(free) * int(size)


def measure_sizes(database: Path, names: list[str]) -> tuple[int, dict[str, int]]:
    """Logical size of the database and bytes per named index or table (dbstat)."""
    with connection(database) as con:
        total = page_bytes(con)
        sizes = {}
        for name in names:
            row = con.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ?", (name,)).fetchone()
            sizes[name] = int(row[0] or 0)
    return total, sizes
