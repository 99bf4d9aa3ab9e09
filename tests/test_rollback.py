"""The rollback: downs in one transaction; a restore only when it loses nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers import PROJECT_MIGRATIONS, migrations_dir, snapshot, tracked_versions, user_snapshot

from liteshift.errors import RollbackRefused
from liteshift.tasks.backup import backup_database
from liteshift.tasks.migrate import apply_migrations
from liteshift.tasks.rollback import rollback_database

NO_DOWN = {"001_col.sql": "-- migrate:up\nALTER TABLE teams ADD COLUMN region TEXT;\n"}


def test_nothing_to_undo_when_never_committed(make_db) -> None:
    db = make_db()
    before = snapshot(db)
    r = rollback_database(db, PROJECT_MIGRATIONS, ["001"])
    assert (r.action, r.message) == ("nothing", "the migration never committed: nothing to undo")
    assert snapshot(db) == before


def test_downs_undo_the_migration(make_db, config) -> None:
    db = make_db()
    before = user_snapshot(db)
    apply_migrations(config(db))
    r = rollback_database(db, PROJECT_MIGRATIONS)
    assert (r.action, r.undone) == ("down", ["001_add_composite_indexes"])
    assert r.verified == ["quick_check: ok", "created indexes gone", "tracking rows gone"]
    assert user_snapshot(db) == before
    assert tracked_versions(db) == []


def test_a_failing_down_changes_nothing(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    d = migrations_dir(
        tmp_path,
        {
            "001_i.sql": "-- migrate:up\nCREATE INDEX i ON worklogs(team_id);\n-- migrate:down\n"
            "DROP INDEX i;\nDROP TABLE no_such_table;\n"
        },
    )
    apply_migrations(config(db, migrations_dir=d))
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as err:
        rollback_database(db, d)
    assert str(err.value) == (
        "The down of 001_i.sql failed, and the backup cannot be restored instead: no such table: "
        "no_such_table in: DROP TABLE no_such_table; backup (none recorded) is not there. "
        "Try: the database is left as the migration made it (nothing was undone); fix the down "
        "section and run 'liteshift rollback' again"
    )
    assert snapshot(db) == before


def test_restore_when_no_down_and_no_writes_since(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    before = user_snapshot(db)
    d, b = _applied_with_backup(db, config, tmp_path, NO_DOWN)
    r = rollback_database(db, d, ["001"], b.path)
    assert (r.action, r.message) == ("restore", f"restored the backup {b.path}")
    assert user_snapshot(db) == before
    assert tracked_versions(db) == []


def test_restore_over_newer_writes_is_refused(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    d, b = _applied_with_backup(db, config, tmp_path, NO_DOWN)
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO companies (name) VALUES ('written after the backup')")
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as err:
        rollback_database(db, d, ["001"], b.path)
    assert str(err.value) == (
        f"Refusing to restore the backup over newer writes: rows were written after the backup "
        f"{b.path} was taken; a restore would discard them. Try: keep the database as it is, or "
        f"inspect {b.path} and move the rows by hand"
    )
    assert snapshot(db) == before


def test_writes_after_backup_survive_a_down_rollback(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    cfg = config(db, backup_dir=tmp_path)
    b = backup_database(cfg)
    apply_migrations(cfg, backup_path=b.path)
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO companies (id, name) VALUES (500, 'kept')")
    rollback_database(db, PROJECT_MIGRATIONS)
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT name FROM companies WHERE id = 500").fetchone() == ("kept",)


def test_nothing_to_undo_needs_no_write_lock(make_db) -> None:
    db = make_db()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # e.g. the application, or the reason the migrate step failed
    try:
        r = rollback_database(db, PROJECT_MIGRATIONS, ["001"], busy_timeout_ms=50)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.action == "nothing"


BAD_DOWN = {
    "001_i.sql": "-- migrate:up\nCREATE INDEX i ON worklogs(team_id);\n"
    "-- migrate:down\nDROP INDEX i_missing;\n"
}


def test_a_failing_down_falls_back_to_the_verified_backup(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    before = user_snapshot(db)
    d, b = _applied_with_backup(db, config, tmp_path, BAD_DOWN)
    r = rollback_database(db, d, ["001"], b.path)
    assert (r.action, r.message) == (
        "restore",
        "The down of 001_i.sql failed (no such index: i_missing in: DROP INDEX i_missing); "
        f"restored the backup {b.path} instead",
    )
    assert user_snapshot(db) == before and tracked_versions(db) == []


def test_a_failing_down_after_newer_writes_restores_nothing(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    d, b = _applied_with_backup(db, config, tmp_path, BAD_DOWN)
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO companies (name) VALUES ('written after the migration')")
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as err:
        rollback_database(db, d, ["001"], b.path)
    assert str(err.value).startswith(
        "The down of 001_i.sql failed, and the backup cannot be restored instead: no such index: "
        f"i_missing in: DROP INDEX i_missing; rows were written after the backup {b.path} was taken"
    )
    assert snapshot(db) == before


def _applied_with_backup(db: Path, config, tmp_path: Path, files: dict[str, str]):
    """Back up db into tmp_path and apply the migrations in files, as the flow does."""
    d = migrations_dir(tmp_path, files)
    cfg = config(db, migrations_dir=d, backup_dir=tmp_path)
    b = backup_database(cfg)
    apply_migrations(cfg, backup_path=b.path, backup_fingerprint=b.fingerprint)
    return d, b
