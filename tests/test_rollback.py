"""The rollback: downs in one transaction; a restore only when it loses nothing."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import PROJECT_MIGRATIONS, index_names, migrations_dir, snapshot, tracked_versions, user_snapshot

from liteshift.core.errors import RollbackRefused
from liteshift.tasks.backup import backup_database
from liteshift.tasks.migrate import apply_migrations
from liteshift.tasks.rollback import rollback_database

# Rows changed with no down section: only the backup can undo it.
NO_DOWN = {"001_col.sql": "-- migrate:up\nUPDATE teams SET name = name || '!' WHERE id <= 3;\n"}


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
    assert (r.action, r.message) == (
        "restore",
        f"restored from the backup {b.path}: teams (3 row(s)); the write ledger proved, under the same "
        "write lock, "
        "that nothing was written to them since the migration (001_col.sql has no down section and its "
        "up has no derived down)",
    )
    assert user_snapshot(db) == before
    assert tracked_versions(db) == []


def test_restore_over_newer_writes_is_refused(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    d, b = _applied_with_backup(db, config, tmp_path, NO_DOWN)
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO teams (company_id, name) VALUES (1, 'written after the backup')")
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as err:
        rollback_database(db, d, ["001"], b.path)
    assert str(err.value).startswith(
        "Refusing to restore the backup over newer writes: written or changed since the migration: "
        f"teams (1 row write(s) since the migration); restoring {b.path} would discard that. Try: keep "
        "the database as it is (the migration stays applied), or move those rows by hand: sqlite3 "
    )
    assert snapshot(db) == before


def test_a_restore_from_another_backup_than_the_proofs_is_refused(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    d, b = _applied_with_backup(db, config, tmp_path, NO_DOWN)
    other = tmp_path / "other.backup"
    shutil.copyfile(b.path, other)
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as err:
        rollback_database(db, d, ["001"], str(other))
    assert str(err.value) == (
        f"Refusing to restore {other}: the migration's proof was made against the backup {b.path}. "
        f"Try: run 'liteshift rollback' without --backup (it uses {b.path})"
    )
    assert snapshot(db) == before


def test_writes_after_backup_survive_a_down_rollback(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    cfg = config(db, backup_dir=tmp_path)
    b = backup_database(cfg, watch_writes=True)
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
        f"restored from the backup {b.path}: no table (schema objects only); the write ledger proved, "
        "under the same write lock, that nothing was written to them since the migration (The down of "
        "001_i.sql failed) instead",
    )
    assert user_snapshot(db) == before and tracked_versions(db) == []


def test_a_failing_down_falls_back_to_a_restore_that_keeps_other_writes(
    make_db, config, tmp_path: Path
) -> None:
    db = make_db()
    d, b = _applied_with_backup(db, config, tmp_path, BAD_DOWN)
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO companies (id, name) VALUES (900, 'written after the migration')")
    r = rollback_database(db, d, ["001"], b.path)
    assert r.action == "restore"
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT name FROM companies WHERE id = 900").fetchone() == (
            "written after the migration",
        )
    assert "i" not in index_names(db)


def _applied_with_backup(db: Path, config, tmp_path: Path, files: dict[str, str]):
    """Back up db into tmp_path and apply the migrations in files, as the flow does."""
    d = migrations_dir(tmp_path, files)
    cfg = config(db, migrations_dir=d, backup_dir=tmp_path)
    b = backup_database(cfg, watch_writes=True)
    apply_migrations(cfg, backup_path=b.path)
    return d, b
