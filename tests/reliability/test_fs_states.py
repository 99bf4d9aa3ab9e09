"""File-system states that are not errors: handled right, not refused."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from checks import MIG_001, applied_versions, integrity, snapshot, user_content

from liteshift.core.config import RunConfig
from liteshift.tasks.backup import backup_database
from liteshift.tasks.migrate import apply_migrations
from liteshift.tasks.validate import validate_database

WRITER_ROWS = 1000
INSERT = (
    "INSERT INTO worklogs (company_id, team_id, jira_instance, author_email, issue_key, started, "
    "time_spent_seconds, comment) VALUES (1, 1, 'Company Main', 'w@example.com', 'PRJ-1', "
    "'2025-01-01T00:00:00', 60, 'wal row')"
)


def test_committed_rows_still_in_the_wal_are_backed_up_and_counted(new_db):
    db = new_db(2000)
    app = sqlite3.connect(db, isolation_level=None)  # an application that keeps its connection open
    app.execute("PRAGMA wal_autocheckpoint = 0")
    for _ in range(WRITER_ROWS):
        app.execute(INSERT)
    try:
        wal = Path(f"{db}-wal")
        assert wal.stat().st_size > 0, "the committed rows must still sit in the -wal file"
        main_only = db.with_name("main-only.db")  # what `cp w.db` would have kept
        main_only.write_bytes(db.read_bytes())
        con = sqlite3.connect(main_only)
        assert con.execute("SELECT count(*) FROM worklogs").fetchone() == (2000,)
        con.close()

        cfg = RunConfig(database=db)
        v = validate_database(cfg)
        b = backup_database(cfg)
        assert b.counts["worklogs"] == 2000 + WRITER_ROWS
        con = sqlite3.connect(b.path)
        assert con.execute("SELECT count(*) FROM worklogs WHERE comment = 'wal row'").fetchone() == (1000,)
        con.close()
        assert v.size_bytes > main_only.stat().st_size, "the size counts the pages still in the WAL"
        apply_migrations(cfg, b.path)
        assert app.execute("SELECT count(*) FROM worklogs").fetchone() == (2000 + WRITER_ROWS,)
    finally:
        app.close()
    assert integrity(db) == ["ok"]


CRASHING_APP = """
import os, signal, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA cache_size = 5")  # spill changed pages into the file before the commit
con.execute("BEGIN")
con.execute("INSERT INTO companies (id, name) VALUES (999, 'committed? no')")
con.execute("UPDATE worklogs SET comment = 'half-done update'")
con.execute("DELETE FROM billing_rates")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_hot_rollback_journal_is_recovered_on_open(new_db, tmp_path):
    db = new_db(3000, wal=False)
    before = user_content(snapshot(db))
    committed_bytes = db.read_bytes()
    crash = subprocess.run([sys.executable, "-c", CRASHING_APP, str(db)], timeout=60)
    assert crash.returncode == -signal.SIGKILL
    journal = Path(f"{db}-journal")
    assert journal.exists() and journal.stat().st_size > 0, "the crash must leave a hot journal"
    header = journal.read_bytes()[:8]
    assert header == bytes.fromhex("d9d505f920a163d7"), "a hot journal starts with its magic number"
    assert db.read_bytes() != committed_bytes, (
        "uncommitted pages reached the file; only the journal undoes them"
    )

    cfg = RunConfig(database=db, migrations_dir=MIG_001.parent)
    v = validate_database(cfg)  # opening the file rolls the hot journal back
    assert v.journal_mode == "delete"
    assert not journal.exists() or journal.stat().st_size == 0
    assert user_content(snapshot(db)) == before, "nothing of the crashed transaction survives"
    b = backup_database(cfg)
    apply_migrations(cfg, b.path)
    assert apply_migrations(cfg).applied == [], "nothing is applied twice"
    assert applied_versions(db) == ["001"]
    assert user_content(snapshot(db))["tables"] == before["tables"]
    assert integrity(db) == ["ok"]


def test_rollback_journal_mode_says_readers_are_blocked(new_db):
    db = new_db(500, wal=False)
    v = validate_database(RunConfig(database=db))
    assert v.journal_mode == "delete"
    assert v.warnings == [
        "journal mode is delete, not WAL: readers are blocked while the indexes are written"
    ]
