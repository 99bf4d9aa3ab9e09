"""Step 3: all pending ups and their tracking rows commit together, or nothing does."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers import index_names, migrations_dir, snapshot, tracked_versions

from liteshift.errors import CheckFailed, DatabaseLocked
from tasks.migrate import migrate_database


def test_migration_001_commits_indexes_and_tracking_row(make_db, config) -> None:
    db = make_db()
    result = migrate_database(config(db), backup_path="/b", flow_run_id="run-1")
    assert result.applied == ["001_add_composite_indexes"]
    assert result.rows_changed == 0
    assert result.lock_seconds > 0
    assert {"idx_worklogs_user_range", "idx_factorial_leaves_company_status"} <= index_names(db)
    with sqlite3.connect(db) as con:
        row = con.execute(
            "SELECT version, name, length(checksum), flow_run_id, backup_path, duration_s > 0 "
            "FROM liteshift_migrations"
        ).fetchone()
    assert row == ("001", "add_composite_indexes", 64, "run-1", "/b", 1)


def test_rerun_applies_nothing(make_db, config) -> None:
    db = make_db()
    migrate_database(config(db))
    before = snapshot(db)
    assert migrate_database(config(db)).applied == []
    assert snapshot(db) == before


def test_unique_index_over_duplicates_leaves_nothing_behind(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    before = snapshot(db)
    d = migrations_dir(
        tmp_path,
        {
            "001_a.sql": "-- migrate:up\nCREATE INDEX ok_first ON worklogs(team_id);\n",
            "002_b.sql": "-- migrate:up\nBEGIN TRANSACTION;\n"
            "CREATE UNIQUE INDEX u_company ON worklogs(company_id);\nCOMMIT;\n",
        },
    )
    with pytest.raises(CheckFailed) as err:
        migrate_database(config(db, migrations_dir=d))
    assert str(err.value) == (
        "Migration 002_b.sql failed: UNIQUE constraint failed: worklogs.company_id in: "
        "CREATE UNIQUE INDEX u_company ON worklogs(company_id). Try: nothing was applied (the "
        "transaction was rolled back); fix the data or the migration and run again"
    )
    assert snapshot(db) == before  # not even 001's index or the tracking table
    assert tracked_versions(db) == []


def test_locked_database_is_refused_without_writing(make_db, config) -> None:
    db = make_db()
    before = snapshot(db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseLocked):
            migrate_database(config(db, busy_timeout_ms=50))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert snapshot(db) == before


def test_migration_without_down_records_a_restore_fingerprint(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    d = migrations_dir(tmp_path, {"001_a.sql": "-- migrate:up\nALTER TABLE teams ADD COLUMN x TEXT;\n"})
    migrate_database(config(db, migrations_dir=d), backup_fingerprint={"teams": [0, 0]})
    with sqlite3.connect(db) as con:
        (fp,) = con.execute("SELECT fingerprint FROM liteshift_migrations").fetchone()
    assert '"backup_current": false' in fp
    assert '"teams": [100, 100]' in fp
