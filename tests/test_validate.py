"""Step 1: every kind of bad input is refused with one clear message and the database untouched."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from helpers import migrations_dir, snapshot

from liteshift.core.errors import BadInput, ChecksumDrift, DatabaseLocked
from liteshift.tasks.validate import validate_database


def test_validation_plans_the_run(make_db, config) -> None:
    db = make_db()
    before = snapshot(db)
    v = validate_database(config(db))
    assert v.pending == ["001_add_composite_indexes"]
    assert v.applied == []
    assert v.check == "quick_check: ok"
    assert v.journal_mode == "wal"
    assert v.touched_tables == ["billing_rates", "factorial_leaves", "worklogs"]
    assert set(v.indexes) == {
        "idx_worklogs_user_range",
        "idx_worklogs_instance_range",
        "idx_billing_rates_lookup",
        "idx_factorial_leaves_company_status",
    }
    assert v.required_bytes == 2 * v.size_bytes
    assert v.warnings == []
    assert snapshot(db) == before


def test_full_integrity_check_on_request(make_db, config) -> None:
    assert validate_database(config(make_db(), integrity="full")).check == "integrity_check: ok"


def test_rollback_journal_mode_is_noted(make_db, config) -> None:
    v = validate_database(config(make_db(wal=False)))
    assert v.journal_mode == "delete"
    assert v.warnings == [
        "journal mode is delete, not WAL: readers are blocked while the indexes are written"
    ]


def _refused(cfg, exc_type: type[BadInput] = BadInput) -> str:
    with pytest.raises(exc_type) as err:
        validate_database(cfg)
    assert err.value.exit_code == 2
    return str(err.value)


def test_missing_file(config, tmp_path: Path) -> None:
    db = tmp_path / "nope.db"
    assert _refused(config(db)) == (
        f"Database {db} does not exist: there is no file at that path. Try: check the --database path "
        "(liteshift never creates the database it migrates)"
    )
    assert not db.exists()


def test_not_a_sqlite_file(config, tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_text("hello, I am a text file\n" * 10)
    assert _refused(config(db)) == (
        f"{db} is not a SQLite database: its first bytes are not the SQLite file header. "
        "Try: check the --database path; liteshift only migrates SQLite 3 files"
    )
    assert db.read_text() == "hello, I am a text file\n" * 10


def test_corrupt_database(make_db, config) -> None:
    db = make_db(wal=False)
    with sqlite3.connect(db) as con:
        root = con.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'worklogs'").fetchone()[0]
    data = bytearray(db.read_bytes())
    page = 4096 * (root - 1)
    data[page : page + 4096] = b"\xff" * 4096  # the table's root page becomes garbage
    db.write_bytes(bytes(data))
    message = _refused(config(db))
    assert message.startswith(f"Database {db} is corrupt: ")
    assert message.endswith(
        "Try: restore the database from your last good backup or run 'sqlite3 DB .recover'; "
        "liteshift will not migrate a damaged file"
    )
    assert db.read_bytes() == bytes(data)


def test_syntax_error_in_migration(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    before = snapshot(db)
    d = migrations_dir(tmp_path, {"001_x.sql": "-- migrate:up\nCREATE INDEXX i ON worklogs(id);\n"})
    assert _refused(config(db, migrations_dir=d)) == (
        'Migration 001_x.sql fails on this database\'s schema: near "INDEXX": syntax error in: '
        "CREATE INDEXX i ON worklogs(id). Try: fix the migration (or the --database path); "
        "nothing was written"
    )
    assert snapshot(db) == before


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("CREATE INDEX i ON worklog(id);", "no such table: main.worklog"),
        ("CREATE INDEX i ON worklogs(author);", "no such column: author"),
    ],
)
def test_migration_touching_missing_table_or_column(make_db, config, tmp_path: Path, sql, error) -> None:
    db = make_db()
    before = snapshot(db)
    d = migrations_dir(tmp_path, {"001_x.sql": f"-- migrate:up\n{sql}\n"})
    assert _refused(config(db, migrations_dir=d)) == (
        f"Migration 001_x.sql fails on this database's schema: {error} in: {sql.rstrip(';')}. "
        "Try: fix the migration (or the --database path); nothing was written"
    )
    assert snapshot(db) == before


def test_drifted_checksum_is_refused_before_anything_is_written(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    d = migrations_dir(tmp_path, {"001_x.sql": "-- migrate:up\nCREATE INDEX i ON worklogs(id);\n"})
    from liteshift.tasks.migrate import apply_migrations

    apply_migrations(config(db, migrations_dir=d))
    before = snapshot(db)
    (d / "001_x.sql").write_text("-- migrate:up\nCREATE INDEX i ON worklogs(started);\n")
    message = _refused(config(db, migrations_dir=d), ChecksumDrift)
    assert message.startswith("Migration 001_x.sql changed after it was applied: applied checksum ")
    assert snapshot(db) == before


def test_database_locked_past_the_timeout(make_db, config) -> None:
    db = make_db()
    before = snapshot(db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        message = _refused(config(db, busy_timeout_ms=100), DatabaseLocked)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert message == (
        f"Database {db} is locked: another connection held the write lock for more than 100 ms. "
        "Try: find the writer (a long transaction or a stuck process) or raise --busy-timeout, "
        "then run again; nothing was written"
    )
    assert snapshot(db) == before


def test_backup_directory_missing(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    where = tmp_path / "no-such-dir"
    assert _refused(config(db, backup_dir=where)) == (
        f"Backup directory {where} does not exist: the backup is written there before anything "
        "changes. Try: create it or pass another --backup-dir"
    )


def test_not_enough_disk_space(make_db, config) -> None:
    db = make_db()
    before = snapshot(db)
    message = _refused(config(db, disk_factor=1e9))
    assert re.fullmatch(
        rf"Not enough disk space in {re.escape(str(db.parent))}: [\d.]+ MB free, [\d.]+ MB needed "
        r"\(1e\+09 x the [\d.]+ MB database for backup and growth\)\. Try: free some space, pass "
        r"another --backup-dir, or lower --disk-factor",
        message,
    ), message
    assert snapshot(db) == before


def test_old_index_of_the_same_name_is_refused(make_db, config) -> None:
    db = make_db()
    with sqlite3.connect(db) as con:
        con.execute("CREATE INDEX idx_worklogs_user_range ON worklogs(company_id)")
    before = snapshot(db)
    assert _refused(config(db)) == (
        "Index idx_worklogs_user_range already exists with another definition: the database has "
        "worklogs(company_id), the migration declares worklogs(company_id, author_email, started DESC). "
        "Try: drop or rename the old index idx_worklogs_user_range first; CREATE INDEX IF NOT EXISTS "
        "would keep it"
    )
    assert snapshot(db) == before


def test_foreign_key_violations_are_refused(make_db, config) -> None:
    db = make_db()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE worklogs SET company_id = 999 WHERE id = 5")
    before = snapshot(db)
    message = _refused(config(db))
    assert message == (
        f"Database {db} has 1 foreign key violation(s): first: worklogs rowid 5 points to a missing "
        "companies row. Try: fix the rows PRAGMA foreign_key_check lists, then run again"
    )
    assert snapshot(db) == before


def test_identical_existing_index_is_a_warning(make_db, config) -> None:
    db = make_db()
    with sqlite3.connect(db) as con:
        con.execute(
            "CREATE INDEX idx_billing_rates_lookup "
            "ON billing_rates(billing_project_id, user_email, issue_type)"
        )
    v = validate_database(config(db))
    assert v.warnings == [
        "index idx_billing_rates_lookup already exists as declared: the migration keeps it, and its "
        "down would drop it"
    ]


@pytest.mark.parametrize(
    ("down", "message"),
    [
        (
            "DROP INDEX i_missing;",
            "The down of 001_i.sql fails after its up: on a copy of the schema: no such index: i_missing "
            "in: DROP INDEX i_missing. Try: fix the down section (a rollback would stop there); "
            "nothing was written",
        ),
        (
            "SELECT 1;",
            "The down of 001_i.sql does not undo its up: after the up and the down on a copy of the schema: "
            "index i is left behind. Try: fix the down section so that it undoes exactly what the up does; "
            "nothing was written",
        ),
    ],
)
def test_a_down_that_does_not_undo_its_up_is_refused_before_writing(
    make_db, config, tmp_path: Path, down: str, message: str
) -> None:
    db = make_db()
    before = snapshot(db)
    d = migrations_dir(
        tmp_path,
        {"001_i.sql": f"-- migrate:up\nCREATE INDEX i ON worklogs(team_id);\n-- migrate:down\n{down}\n"},
    )
    with pytest.raises(BadInput) as err:
        validate_database(config(db, migrations_dir=d))
    assert str(err.value) == message and err.value.exit_code == 2
    assert snapshot(db) == before


def test_a_down_that_recreates_a_dropped_index_in_other_words_is_accepted(
    make_db, config, tmp_path: Path
) -> None:
    db = make_db()
    d = migrations_dir(
        tmp_path,
        {
            "001_i.sql": "-- migrate:up\nCREATE INDEX i ON worklogs(team_id);\n"
            "-- migrate:down\nDROP INDEX i;\n",
            "002_j.sql": "-- migrate:up\nDROP INDEX i;\n"
            "-- migrate:down\ncreate   index i on worklogs (team_id);\n",
        },
    )
    assert validate_database(config(db, migrations_dir=d)).pending == ["001_i", "002_j"]
