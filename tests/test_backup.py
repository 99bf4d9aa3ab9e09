"""Step 2: the backup is a verified, private, complete copy, WAL contents included."""

from __future__ import annotations

import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import user_snapshot

from liteshift.core.errors import CheckFailed
from liteshift.core.progress import Tick
from liteshift.tasks import backup as backup_mod
from liteshift.tasks.backup import backup_database, backup_path_for


def test_backup_is_verified_private_and_complete(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    seen: list[Tick] = []
    b = backup_database(config(db, backup_dir=tmp_path), on_progress=seen.append)
    path = Path(b.path)
    assert path.parent == tmp_path
    assert path.name.startswith("worklog_storage.db.backup-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b.bytes == path.stat().st_size
    assert b.counts["worklogs"] == 2000
    assert seen[-1] == Tick("backup", b.bytes, b.bytes, "bytes", str(db))
    assert user_snapshot(path) == user_snapshot(db)
    assert not list(tmp_path.glob("*.partial*"))


def test_rows_still_in_the_wal_are_in_the_backup(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute(
        "INSERT INTO worklogs (company_id, jira_instance, author_email, issue_key, started, "
        "time_spent_seconds) VALUES (1, 'Company Main', 'w@example.com', 'X-1', '2025-01-02', 60)"
    )
    assert Path(f"{db}-wal").stat().st_size > 0  # committed, not yet checkpointed
    b = backup_database(config(db, backup_dir=tmp_path))
    writer.close()
    assert b.counts["worklogs"] == 2001
    with sqlite3.connect(b.path) as con:
        assert con.execute("SELECT count(*) FROM worklogs").fetchone()[0] == 2001


def test_name_gets_a_suffix_when_taken(tmp_path: Path) -> None:
    now = datetime(2026, 2, 10, 12, 41, 3, tzinfo=UTC)
    first = backup_path_for(Path("/x/w.db"), tmp_path, now)
    assert first == tmp_path / "w.db.backup-20260210_124103"
    first.touch()
    assert backup_path_for(Path("/x/w.db"), tmp_path, now) == tmp_path / "w.db.backup-20260210_124103-1"


def test_a_failed_verification_leaves_no_backup(make_db, config, tmp_path: Path, monkeypatch) -> None:
    db = make_db()

    def corrupt_copy(partial: Path, counts: dict[str, list[int]]) -> float:
        raise CheckFailed(f"Backup {partial.name} failed quick_check", "boom", "run again")

    monkeypatch.setattr(backup_mod, "_verify", corrupt_copy)
    with pytest.raises(CheckFailed):
        backup_database(config(db, backup_dir=tmp_path))
    assert [p.name for p in tmp_path.iterdir() if "backup" in p.name] == []


@pytest.mark.parametrize("watch", [False, True])
def test_only_a_backup_that_asks_for_it_puts_on_the_write_ledger(
    make_db, config, tmp_path: Path, watch
) -> None:
    db = make_db()
    b = backup_database(config(db, backup_dir=tmp_path), watch_writes=watch)
    with sqlite3.connect(db) as con:
        triggers = con.execute(
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'liteshift_w%_u'"
        ).fetchone()
    with sqlite3.connect(b.path) as con:  # the backup holds the counters it was taken with
        counted = con.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'liteshift_writes'").fetchone()
    tables = 7  # the demo's user tables, sqlite_stat1 aside
    assert (triggers, counted) == (((tables,), (1,)) if watch else ((0,), (0,)))
