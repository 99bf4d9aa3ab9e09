"""Steps 4 and 5: indexes exactly as declared; integrity of what changed; rows unchanged."""

from __future__ import annotations

import sqlite3

import pytest

from liteshift.core.errors import CheckFailed
from liteshift.core.indexes import index_definition
from liteshift.tasks.integrity import check_integrity
from liteshift.tasks.migrate import apply_migrations
from liteshift.tasks.validate import validate_database
from liteshift.tasks.verify_indexes import verify_indexes


def test_migrated_indexes_verify(make_db, config) -> None:
    db = make_db()
    declared = validate_database(config(db)).indexes
    apply_migrations(config(db))
    found = verify_indexes(config(db), declared)
    assert next((i.name, i.definition) for i in found) == (
        "idx_worklogs_user_range",
        "worklogs(company_id, author_email, started DESC)",
    )
    assert len(found) == 4


def test_missing_index_fails(make_db, config) -> None:
    db = make_db()
    declared = validate_database(config(db)).indexes
    with pytest.raises(CheckFailed) as err:
        verify_indexes(config(db), declared)
    assert str(err.value) == (
        "Index idx_worklogs_user_range is missing after the migration: expected worklogs(company_id, "
        "author_email, started DESC). Try: the migration will be rolled back; check its statements"
    )


def test_index_with_other_columns_kept_by_if_not_exists_fails(make_db, config) -> None:
    db = make_db()
    declared = validate_database(config(db)).indexes
    with sqlite3.connect(db) as con:
        con.execute("CREATE INDEX idx_worklogs_user_range ON worklogs(company_id, started)")
    apply_migrations(config(db))  # IF NOT EXISTS keeps the old one silently
    with pytest.raises(CheckFailed) as err:
        verify_indexes(config(db), declared)
    assert str(err.value) == (
        "Index idx_worklogs_user_range does not match its declaration: the database has "
        "worklogs(company_id, started), the migration declares worklogs(company_id, author_email, "
        "started DESC). Try: drop the old index of that name, then run again"
    )


def test_partial_and_unique_definitions_are_compared(make_db) -> None:
    db = make_db()
    with sqlite3.connect(db) as con:
        con.execute("CREATE UNIQUE INDEX p ON worklogs(id, company_id) WHERE company_id > 3")
        d = index_definition(con, "p")
    assert d is not None
    assert d.describe() == "worklogs(id, company_id) UNIQUE WHERE company_id > 3"


def test_integrity_passes_and_counts_rows(make_db, config) -> None:
    db = make_db()
    apply_migrations(config(db))
    g = check_integrity(config(db), ["worklogs", "billing_rates"], index_only=True, rows_changed=0)
    assert g.checked_tables == ["worklogs", "billing_rates"]
    assert g.counts == {"worklogs": 2000, "billing_rates": 1000}


def test_index_migration_that_changed_rows_fails(make_db, config) -> None:
    db = make_db()
    with pytest.raises(CheckFailed) as err:
        check_integrity(config(db), ["worklogs"], index_only=True, rows_changed=3)
    assert str(err.value) == (
        "An index-only migration changed rows: 3 row(s) inserted, updated or deleted inside it. "
        "Try: the migration will be rolled back; check its statements"
    )


def test_foreign_key_violation_after_migration_fails(make_db, config) -> None:
    db = make_db()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE teams SET company_id = 777 WHERE id = 2")
    with pytest.raises(CheckFailed) as err:
        check_integrity(config(db), ["teams"], index_only=False, rows_changed=1)
    assert str(err.value) == (
        "The migration left 1 foreign key violation(s): first: teams rowid 2 -> companies. "
        "Try: the migration will be rolled back"
    )
