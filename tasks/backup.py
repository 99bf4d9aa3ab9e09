"""Step 2, backup: SQLite's online backup API in one step, fsynced, 0600, then verified."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from liteshift.core import faults
from liteshift.core.config import RunConfig
from liteshift.core.db import (
    connection,
    copy_to_new_file,
    fingerprint,
    page_bytes,
    pragma_check,
    write_transaction,
)
from liteshift.core.errors import BadInput, CheckFailed, MigrationError
from liteshift.core.progress import Progress, Tick, tell
from liteshift.migrate import ledger
from liteshift.migrate.restore import trim_ledger

PARTIAL_SUFFIX = ".partial"


@dataclass
class Backup:
    """A verified backup: where it is, how big, how fast, and what it holds."""

    path: str
    bytes: int
    seconds: float
    mb_per_s: float
    fingerprint: dict[str, list[int]]  # per table: [rows, max rowid] at backup time
    verify_seconds: float
    sync_seconds: float = 0.0  # fsync of the copy and its directory

    @property
    def counts(self) -> dict[str, int]:
        return {table: rows for table, (rows, _) in self.fingerprint.items()}


def backup_path_for(db: Path, directory: Path, now: datetime | None = None) -> Path:
    """<db>.backup-YYYYMMDD_HHMMSS in directory, with -N appended if that name is taken."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d_%H%M%S")
    candidate = directory / f"{db.name}.backup-{stamp}"
    n = 1
    while candidate.exists() or candidate.with_name(candidate.name + PARTIAL_SUFFIX).exists():
        candidate = directory / f"{db.name}.backup-{stamp}-{n}"
        n += 1
    return candidate


def backup_database(
    cfg: RunConfig, on_progress: Progress | None = None, watch_writes: bool | Sequence[str] = False
) -> Backup:
    """Copy the live database with the backup API, verify the copy, and only then name it.

    watch_writes: first put the write ledger (liteshift.migrate.ledger) on these tables (True: every
    table), so that the backup holds their counters and a later restore can prove what was written
    since. The migrate flow asks for the tables a pending migration that only the backup can undo
    may write; a repair's backup (maintenance) never needs it.
    """
    remove_stale_partials(cfg.database, cfg.backup_directory)
    if watch_writes:
        with (
            connection(cfg.database, cfg.busy_timeout_ms) as con,
            write_transaction(con, cfg.database, cfg.busy_timeout_ms),
        ):
            wanted = ledger.guardable_tables(con) if watch_writes is True else list(watch_writes)
            ledger.keep_only(con, ledger.guarded(con) | set(wanted))  # an older proof's tables stay
    try:
        return _backup(cfg, on_progress)
    except BaseException:
        if watch_writes:  # a failed backup leaves the database as it found it, when it can
            with contextlib.suppress(MigrationError, sqlite3.Error):
                trim_ledger(str(cfg.database), cfg.busy_timeout_ms)
        raise


def _backup(cfg: RunConfig, on_progress: Progress | None) -> Backup:
    final = backup_path_for(cfg.database, cfg.backup_directory)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    claim = _create_private(partial)  # flocked until this process ends: the partial is ours
    faults.point("backup-partial-created")
    try:
        with connection(cfg.database, cfg.busy_timeout_ms) as src:
            src.execute("BEGIN")  # one read snapshot for the counts and the copy
            counts = fingerprint(src)
            total = page_bytes(src)
            start = time.perf_counter()
            _copy(src, partial, total, on_progress, str(cfg.database))
            seconds = time.perf_counter() - start
            src.execute("COMMIT")
        faults.point("backup-copied")
        verify_seconds = _verify(partial, counts)
        sync_start = time.perf_counter()
        _fsync(partial)
        faults.point("backup-verified")
        os.replace(partial, final)
        _fsync(final.parent)
        sync_seconds = time.perf_counter() - sync_start
        faults.point("backup-renamed")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        os.close(claim)
    size = final.stat().st_size
    mb_per_s = size / 1e6 / max(seconds, 1e-9)
    return Backup(str(final), size, seconds, mb_per_s, counts, verify_seconds, sync_seconds)


def remove_stale_partials(db: Path, directory: Path) -> list[Path]:
    """Delete this database's <db>.backup-*.partial files whose writer died (nobody flocks them)."""
    removed = []
    for path in directory.glob(f"{glob.escape(db.name)}.backup-*{PARTIAL_SUFFIX}"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live run is still writing it
        finally:
            os.close(fd)
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
            leftover.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _create_private(path: Path) -> int:
    """Create the file 0600 and hold an exclusive flock on it; return the descriptor."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        raise BadInput(
            f"Cannot create the backup {path}",
            exc.strerror or str(exc),
            "check that the backup directory exists, is writable and has space",
        ) from exc
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.chmod(path, 0o600)
    return fd


def _copy(
    src: sqlite3.Connection, partial: Path, total: int, on_progress: Progress | None, database: str
) -> None:
    done = threading.Event()
    watcher = _watch(partial, total, on_progress, done, database)
    try:
        copy_to_new_file(src, partial, during=lambda: faults.point("backup-copying"), label="backup")
    finally:
        done.set()
        watcher.join()
    tell(on_progress, Tick("backup", total, total, "bytes", database))


def _watch(
    partial: Path, total: int, on_progress: Progress | None, done: threading.Event, database: str
) -> threading.Thread:
    """Report progress by watching the copy grow (a one-step backup has no callback of its own)."""

    def run() -> None:
        while not done.wait(0.5):
            size = partial.stat().st_size if partial.exists() else 0
            tell(on_progress, Tick("backup", min(size, max(total - 1, 0)), total, "bytes", database))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _verify(partial: Path, counts: dict[str, list[int]]) -> float:
    start = time.perf_counter()
    # Read-write open so SQLite removes the -wal/-shm it makes for the copy's WAL header on close.
    with connection(partial) as con:
        problems = pragma_check(con, "quick_check")
        if problems:
            raise CheckFailed(
                f"Backup {partial.name} failed quick_check",
                problems[0],
                "the database was not changed; check the disk and run again",
            )
        copied = fingerprint(con)
    if copied != counts:
        diff = {t: (counts[t], copied.get(t)) for t in counts if counts[t] != copied.get(t)}
        raise CheckFailed(
            f"Backup {partial.name} does not match the database",
            f"[rows, max rowid] differ (source, copy): {diff}",
            "the database was not changed; run again",
        )
    return time.perf_counter() - start


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
