"""Step 3: all pending ups and their tracking rows commit together, or nothing does."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers import index_names, migrations_dir, snapshot, tracked_versions

from liteshift.core.errors import CheckFailed, DatabaseLocked
from liteshift.tasks.migrate import apply_migrations


def test_migration_001_commits_indexes_and_tracking_row(make_db, config) -> None:
    db = make_db()
    result = apply_migrations(config(db), backup_path="/b", flow_run_id="run-1")
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
    apply_migrations(config(db))
    before = snapshot(db)
    assert apply_migrations(config(db)).applied == []
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
        apply_migrations(config(db, migrations_dir=d))
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
            apply_migrations(config(db, busy_timeout_ms=50))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert snapshot(db) == before


def test_a_migration_without_backup_records_why_no_restore_is_proven(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    d = migrations_dir(tmp_path, {"001_a.sql": "-- migrate:up\nUPDATE teams SET name = name || '!';\n"})
    apply_migrations(config(db, migrations_dir=d))
    with sqlite3.connect(db) as con:
        (fp,) = con.execute("SELECT fingerprint FROM liteshift_migrations").fetchone()
    assert json.loads(fp) == {
        "undo": "backup",
        "down": None,
        "rebuilds_back": [],
        "proof": None,
        "no_proof": "the run took no backup",
    }


def test_an_index_migration_records_its_derived_down(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    d = migrations_dir(
        tmp_path,
        {
            "001_a.sql": '-- migrate:up\nCREATE INDEX IF NOT EXISTS "by name" ON teams(name);\n'
            "CREATE VIEW v AS SELECT name FROM teams;\nANALYZE teams;\n"
            "DROP INDEX idx_worklogs_company;\nALTER TABLE teams RENAME COLUMN name TO title;\n"
        },
    )
    apply_migrations(config(db, migrations_dir=d))
    with sqlite3.connect(db) as con:
        (fp,) = con.execute("SELECT fingerprint FROM liteshift_migrations").fetchone()
        (layout,) = con.execute("SELECT value FROM liteshift_meta WHERE key = 'tracking_schema'").fetchone()
        ledger = con.execute("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'liteshift_w%'").fetchone()
    assert json.loads(fp)["undo"] == "derived" and layout == "3"
    assert json.loads(fp)["down"] == [
        {"sql": 'ALTER TABLE "teams" RENAME COLUMN "title" TO "name"'},
        {"sql": 'CREATE INDEX "idx_worklogs_company"\n    ON "worklogs" ("company_id")'},
        {"sql": 'DROP VIEW "v"'},
        {"sql": 'DROP INDEX "by name"'},
    ]
    assert ledger == (0,), "no proof is needed, so no trigger taxes the application's writes"


@pytest.mark.parametrize("layout", [1, 2])
def test_an_older_layout_loses_its_unsound_restore_proof_in_the_upgrade(make_db, config, layout: int) -> None:
    from liteshift.core.tracking import META_DDL, TRACKING_DDL

    db = make_db()
    old = (
        {"backup_current": True, "after": {"teams": [1, 2]}}
        if layout == 1
        else {"restore_if": {"teams": [1, 2]}, "rebuilt": [["teams", "CREATE TABLE teams (id)"]]}
    )
    with sqlite3.connect(db) as con:
        con.execute(TRACKING_DDL)
        if layout == 2:
            con.execute(META_DDL)
            con.execute("INSERT INTO liteshift_meta VALUES ('tracking_schema', '2')")
        con.execute(
            "INSERT INTO liteshift_migrations VALUES ('000', 'old', 'x', 't', 0, NULL, 'b0', '/b', ?)",
            (json.dumps(old),),
        )
    apply_migrations(config(db))
    with sqlite3.connect(db) as con:
        rows = dict(con.execute("SELECT version, fingerprint FROM liteshift_migrations").fetchall())
        (layout_now,) = con.execute(
            "SELECT value FROM liteshift_meta WHERE key = 'tracking_schema'"
        ).fetchone()
    kept = {} if layout == 1 else {"rebuilt": [["teams", "CREATE TABLE teams (id)"]]}
    assert json.loads(rows["000"]) == kept and layout_now == "3"


def test_a_tracking_layout_from_a_newer_liteshift_is_refused(make_db, config) -> None:
    from liteshift.core.errors import BadInput

    db = make_db()
    apply_migrations(config(db))
    with sqlite3.connect(db) as con:
        con.execute("UPDATE liteshift_meta SET value = '9' WHERE key = 'tracking_schema'")
    before = snapshot(db)
    with pytest.raises(BadInput) as err:
        apply_migrations(config(db))
    assert str(err.value) == (
        "The database's liteshift tables have layout 9: this liteshift knows layouts up to 3; a newer "
        "liteshift wrote them. Try: run the newer liteshift (pip install -U liteshift); nothing was written"
    )
    assert snapshot(db) == before


def test_001_analyses_exactly_the_indexes_it_creates(make_db, config) -> None:
    db = make_db()

    def stats() -> set[tuple[str, str | None, str]]:
        with sqlite3.connect(db) as con:
            return set(con.execute("SELECT tbl, idx, stat FROM sqlite_stat1"))

    before = stats()
    apply_migrations(config(db))
    after = stats()
    assert before <= after, "no other statistics were rewritten"
    assert {idx for _, idx, _ in after - before} == {
        "idx_worklogs_user_range",
        "idx_worklogs_instance_range",
        "idx_billing_rates_lookup",
        "idx_factorial_leaves_company_status",
    }
