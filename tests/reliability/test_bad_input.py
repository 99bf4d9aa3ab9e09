"""Bad input and hostile file-system states: each refused with its exact message, nothing changed.

Read-only cases run as root here, and root ignores permission bits, so they use `chattr +i`
(the immutable flag stops root too); the full file system is a 1 MiB tmpfs mounted for the test.
Both need root and ext4/tmpfs: the tests skip, saying so, only where that is impossible.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from checks import MIG_001, snapshot, user_content

from liteshift.core import lock
from liteshift.core.config import RunConfig
from liteshift.core.errors import BadInput, ChecksumDrift, DatabaseLocked, RollbackRefused
from liteshift.tasks.backup import backup_database
from liteshift.tasks.migrate import apply_migrations
from liteshift.tasks.rollback import rollback_database
from liteshift.tasks.validate import CORRUPT_HINT, validate_database

PAGE = 4096


def refused(cfg: RunConfig, kind: type[BadInput] = BadInput) -> str:
    """Run pre-flight validation, expect the refusal, and return its one-line message."""
    with pytest.raises(kind) as exc:
        validate_database(cfg)
    assert exc.value.exit_code == 2
    return str(exc.value)


def unchanged(db: Path, before: dict[str, object]) -> None:
    assert snapshot(db) == before


# ---------------------------------------------------------------- the file itself


def test_missing_file(tmp_path):
    db = tmp_path / "nope.db"
    assert refused(RunConfig(database=db)) == (
        f"Database {db} does not exist: there is no file at that path. Try: check the --database path "
        "(liteshift never creates the database it migrates)"
    )
    assert not db.exists()


def test_directory_instead_of_a_file(tmp_path):
    assert refused(RunConfig(database=tmp_path)) == (
        f"Database {tmp_path} is not a file: it is a directory or a device. "
        "Try: point --database at the .db file itself"
    )


@pytest.mark.parametrize("content", [b"name,email\nann,ann@example.com\n", b""], ids=["csv", "empty"])
def test_not_a_sqlite_file(tmp_path, content):
    db = tmp_path / "w.db"
    db.write_bytes(content)
    assert refused(RunConfig(database=db)) == (
        f"{db} is not a SQLite database: its first bytes are not the SQLite file header. "
        "Try: check the --database path; liteshift only migrates SQLite 3 files"
    )
    assert db.read_bytes() == content


def _damage(db: Path, page: int, how: str) -> bytes:
    data = bytearray(db.read_bytes())
    start = (page - 1) * PAGE
    if how == "flip":
        data[start : start + PAGE] = bytes(b ^ 0xFF for b in data[start : start + PAGE])
    elif how == "schema":
        data[100 + 8 : 100 + 60] = b"\x7f" * 52  # the schema page's cell pointers
    db.write_bytes(bytes(data))
    return bytes(data)


def test_corrupt_schema_page(new_db):
    db = new_db(2000, wal=False)
    damaged = _damage(db, 1, "schema")
    message = refused(RunConfig(database=db))
    assert message == f"Database {db} is corrupt: database disk image is malformed. Try: {CORRUPT_HINT}"
    assert db.read_bytes() == damaged


def test_flipped_page(new_db):
    db = new_db(2000, wal=False)
    damaged = _damage(db, 20, "flip")  # a leaf page of worklogs, every bit inverted
    assert refused(RunConfig(database=db)) == (
        f"Database {db} is corrupt: quick_check could not run: database disk image is malformed. "
        f"Try: {CORRUPT_HINT}"
    )
    assert db.read_bytes() == damaged


def test_truncated_file(new_db):
    db = new_db(2000, wal=False)
    data = db.read_bytes()[: 40 * PAGE]
    db.write_bytes(data)
    assert refused(RunConfig(database=db)) == (
        f"Database {db} is corrupt: database disk image is malformed. Try: {CORRUPT_HINT}"
    )
    assert db.read_bytes() == data


# ---------------------------------------------------------------- migrations


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        ("CREAT INDEX idx_x ON worklogs(company_id);", 'near "CREAT": syntax error'),
        ("CREATE INDEX idx_x ON no_such_table(company_id);", "no such table: main.no_such_table"),
        ("CREATE INDEX idx_x ON worklogs(no_such_column);", "no such column: no_such_column"),
    ],
    ids=["syntax-error", "missing-table", "missing-column"],
)
def test_migration_that_fails_on_this_schema(new_db, make_migrations, statement, error):
    db = new_db(500)
    before = snapshot(db)
    migs = make_migrations({"002_bad.sql": f"-- migrate:up\n{statement}\n"})
    assert refused(RunConfig(database=db, migrations_dir=migs)) == (
        f"Migration 002_bad.sql fails on this database's schema: {error} in: {statement.rstrip(';')}. "
        "Try: fix the migration (or the --database path); nothing was written"
    )
    unchanged(db, before)


def test_drifted_checksum(new_db, make_migrations):
    db = new_db(500)
    migs = make_migrations({MIG_001.name: MIG_001.read_text()})
    apply_migrations(RunConfig(database=db, migrations_dir=migs))
    before = snapshot(db)
    old = (migs / MIG_001.name).read_bytes()
    (migs / MIG_001.name).write_bytes(old + b"\n-- edited after it was applied\n")
    import hashlib

    was, now = hashlib.sha256(old).hexdigest(), hashlib.sha256((migs / MIG_001.name).read_bytes()).hexdigest()
    assert refused(RunConfig(database=db, migrations_dir=migs), ChecksumDrift) == (
        f"Migration {MIG_001.name} changed after it was applied: applied checksum {was}, file checksum "
        f"now {now}. Try: restore the file as it was applied, or write the change as a new migration"
    )
    unchanged(db, before)


def test_missing_migrations_directory(new_db, tmp_path):
    db = new_db(500)
    assert refused(RunConfig(database=db, migrations_dir=tmp_path / "nope")) == (
        f"Migrations directory {tmp_path / 'nope'} does not exist: liteshift reads NNN_slug.sql files "
        "from it. Try: pass --migrations DIR pointing at your migrations"
    )


def test_migration_whose_down_fails(new_db, make_migrations):
    db = new_db(500)
    migs = make_migrations(
        {
            "001_idx.sql": "-- migrate:up\nCREATE INDEX idx_a ON worklogs(issue_key);\n"
            "-- migrate:down\nDROP INDEX idx_not_there;\n"
        }
    )
    apply_migrations(RunConfig(database=db, migrations_dir=migs))
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as exc:
        rollback_database(db, migs)
    assert str(exc.value) == (
        "The down of 001_idx.sql failed, and the backup cannot be restored instead: no such index: "
        "idx_not_there in: DROP INDEX idx_not_there; backup (none recorded) is not there. "
        "Try: the database is left as the migration made it (nothing was undone); fix the down section "
        "and run 'liteshift rollback' again"
    )
    unchanged(db, before)


# Rows rewritten with no down section: only the backup can undo it (an index has a derived down).
REWRITE = {"001_fix.sql": "-- migrate:up\nUPDATE worklogs SET issue_key = issue_key || '-x' WHERE id = 1;\n"}


def test_a_partial_backup_is_never_restored(new_db, make_migrations):
    db = new_db(500)
    migs = make_migrations(REWRITE)
    b = backup_database(RunConfig(database=db, migrations_dir=migs), watch_writes=True)
    apply_migrations(RunConfig(database=db, migrations_dir=migs), b.path)
    partial = Path(b.path + ".partial")
    shutil.copyfile(b.path, partial)
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as exc:
        rollback_database(db, migs, backup_path=str(partial))
    assert str(exc.value) == (
        f"Refusing to restore {partial}: a .partial file is a backup that was never finished and "
        "verified. Try: pass a backup without the .partial suffix, or keep the database as it is"
    )
    unchanged(db, before)


def test_invalid_parameter():
    with pytest.raises(BadInput) as exc:
        RunConfig.from_parameters(dict(database="w.db", busy_timeout_ms=-1))
    assert str(exc.value) == (
        "Invalid parameter busy_timeout_ms: Input should be greater than or equal to 0. "
        "Try: see 'liteshift run --help' for the accepted values"
    )


# ---------------------------------------------------------------- locks


def test_database_locked_past_the_timeout(new_db):
    db = new_db(500)
    before = snapshot(db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # an application's long write transaction
    try:
        assert refused(RunConfig(database=db, busy_timeout_ms=200), DatabaseLocked) == (
            f"Database {db} is locked: another connection held the write lock for more than 200 ms. "
            "Try: find the writer (a long transaction or a stuck process) or raise --busy-timeout, then "
            "run again; nothing was written"
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    unchanged(db, before)


def test_two_runs_at_once(new_db):
    db = new_db(500)
    other = subprocess.Popen(  # a second, live runner holding the lock
        ["python3", "-c", "import sys, time; time.sleep(60)"],
    )
    try:
        con = sqlite3.connect(db, isolation_level=None)
        con.execute(lock.LOCK_DDL)
        now = time.time()
        con.execute(
            "INSERT INTO liteshift_lock VALUES (1, 'tok', ?, ?, ?, ?)",
            (socket.gethostname(), other.pid, now, now),
        )
        con.close()
        before = snapshot(db)
        with pytest.raises(lock.LockHeld) as exc:
            lock.acquire(db)
        assert str(exc.value) == (
            f"Database {db} is being migrated by another run: host {socket.gethostname()} pid {other.pid} "
            "holds the liteshift lock (heartbeat 0 s ago). Try: wait for that run to finish; a lock whose "
            "process died is recovered automatically"
        )
        unchanged(db, before)
    finally:
        other.kill()
        other.wait()
    lock.release(db, lock.acquire(db).token)  # once that process is gone, its lock is recovered


# ---------------------------------------------------------------- read-only and full file systems


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """chattr +i: not even root may write it (root ignores chmod). Skips where impossible."""
    if os.geteuid() != 0 or not shutil.which("chattr"):
        pytest.skip("needs root and chattr for a read-only test that also holds for root")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip(f"chattr +i is not supported on the file system of {path}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextmanager
def tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    """A small tmpfs mounted at path (needs root); skips where mounting is impossible."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_read_only_database(new_db):
    db = new_db(500, wal=False)
    before = snapshot(db)
    with immutable(db):
        assert not os.access(db, os.W_OK)
        assert refused(RunConfig(database=db)) == (
            f"Database {db} is read-only: liteshift needs to write the file to add the migration. "
            "Try: run as the file's owner or fix its permissions (chmod u+w)"
        )
    unchanged(db, before)


def test_read_only_directory(new_db, tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    db = new_db(500, wal=False, directory=directory)
    before = snapshot(db)
    with immutable(directory):
        assert refused(RunConfig(database=db)) == (
            f"Directory {directory} is read-only: SQLite writes its -wal / -journal files beside the "
            "database. Try: make the directory writable for the user running liteshift"
        )
    unchanged(db, before)


def test_backup_directory_not_writable(new_db, tmp_path):
    db = new_db(500)
    before = snapshot(db)
    backups = tmp_path / "backups"
    backups.mkdir()
    with immutable(backups):
        assert refused(RunConfig(database=db, backup_dir=backups)) == (
            f"Backup directory {backups} is not writable: the backup is written there before anything "
            "changes. Try: fix its permissions or pass another --backup-dir"
        )
    unchanged(db, before)


def test_not_enough_disk_space(new_db, tmp_path):
    with tmpfs(tmp_path / "small") as small:
        db = new_db(3000, wal=False, directory=small)  # ~0.5 MB on a 1 MiB file system
        before = snapshot(db)
        con = sqlite3.connect(db)
        size_mb = con.execute("PRAGMA page_count").fetchone()[0] * PAGE / 1e6
        con.close()
        free_mb = shutil.disk_usage(small).free / 1e6
        assert refused(RunConfig(database=db, disk_factor=2)) == (
            f"Not enough disk space in {small}: {free_mb:.1f} MB free, {2 * size_mb:.1f} MB needed "
            f"(2 x the {size_mb:.1f} MB database for backup and growth). Try: free some space, pass "
            "another --backup-dir, or lower --disk-factor"
        )
        unchanged(db, before)


def test_backup_directory_on_a_full_file_system(new_db, tmp_path):
    """Validation passes, then another process fills the file system before the backup writes."""
    db = new_db(5000)
    before = snapshot(db)
    with tmpfs(tmp_path / "full") as backups:
        cfg = RunConfig(database=db, backup_dir=backups)
        validate_database(cfg)
        filler = backups / "filler"
        with filler.open("wb") as fh:  # leave ~200 kB: less than the database
            fh.write(b"\0" * (shutil.disk_usage(backups).free - 200_000))
        with pytest.raises(BadInput) as exc:
            backup_database(cfg, watch_writes=True)
        name = str(exc.value).split()[2]
        assert str(exc.value) == (
            f"The backup {name} could not be written: database or disk is full. Try: free space in the "
            "backup directory or pass another --backup-dir; the database was not changed"
        )
        assert name.startswith("w.db.backup-") and name.endswith(".partial")
        assert sorted(p.name for p in backups.iterdir()) == ["filler"], "no partial backup is left"
    unchanged(db, before)
    assert user_content(snapshot(db)) == user_content(before)


def test_a_damaged_backup_is_never_restored(new_db, make_migrations):
    db = new_db(2000, wal=False)
    migs = make_migrations(REWRITE)
    cfg = RunConfig(database=db, migrations_dir=migs)
    b = backup_database(cfg, watch_writes=True)
    apply_migrations(cfg, b.path)  # no down: the rollback would restore the backup
    _damage(Path(b.path), 20, "flip")
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as exc:
        rollback_database(db, migs)
    assert str(exc.value) == (
        f"Refusing to restore {b.path}: the backup fails quick_check: database disk image is malformed. "
        "Try: the database was not changed; restore an older good backup by hand"
    )
    unchanged(db, before)
