"""Migration files: parsing, checksums, drift, rehearsal; and the shape of migration 001."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from helpers import PROJECT_MIGRATIONS, migrations_dir

from liteshift.core import migrations as mig
from liteshift.core import tracking
from liteshift.core.errors import BadInput, ChecksumDrift
from liteshift.migrate.rehearsal import rehearse


def test_001_creates_exactly_the_reports_four_indexes() -> None:
    m = mig.parse_migration(PROJECT_MIGRATIONS / "001_add_composite_indexes.sql")
    assert m.version == "001" and m.name == "add_composite_indexes"
    assert m.created_index_names() == [
        "idx_worklogs_user_range",
        "idx_worklogs_instance_range",
        "idx_billing_rates_lookup",
        "idx_factorial_leaves_company_status",
    ]
    assert all("IF NOT EXISTS" in s for s in m.up if s.startswith("CREATE"))
    # statistics for what it created, not a whole-database ANALYZE inside the write lock
    assert m.up[4:] == tuple(f"ANALYZE {n}" for n in m.created_index_names())
    assert [s for s in m.down if s.startswith("DROP")] == [
        f"DROP INDEX IF EXISTS {n}" for n in m.created_index_names()
    ]


def test_001_declared_definitions_match_the_report(make_db) -> None:
    db = make_db()
    m = mig.parse_migration(PROJECT_MIGRATIONS / "001_add_composite_indexes.sql")
    with sqlite3.connect(db) as con:
        rehearsal = rehearse(con, [m])
    got = {name: d.describe() for name, d in rehearsal.indexes.items()}
    assert got == {
        "idx_worklogs_user_range": "worklogs(company_id, author_email, started DESC)",
        "idx_worklogs_instance_range": "worklogs(company_id, jira_instance, started DESC)",
        "idx_billing_rates_lookup": "billing_rates(billing_project_id, user_email, issue_type)",
        "idx_factorial_leaves_company_status": "factorial_leaves(user_id, status, start_date DESC)",
    }
    assert rehearsal.touched_tables == ("billing_rates", "factorial_leaves", "worklogs")
    assert rehearsal.index_only


def test_001_sidecar_holds_the_reports_queries_verbatim() -> None:
    m = mig.parse_migration(PROJECT_MIGRATIONS / "001_add_composite_indexes.sql")
    by_name = {q.name: q for q in m.queries}
    assert by_name["user_worklogs_range"].sql == (
        "SELECT * FROM worklogs\nWHERE company_id = 1 AND author_email = 'user@example.com'\n"
        "AND date(started) >= '2025-01-01' AND date(started) <= '2025-01-31';"
    )
    assert by_name["sync_instance_range"].sql == (
        "SELECT * FROM worklogs\nWHERE company_id = 1 AND jira_instance = 'Company Main'\n"
        "AND date(started) >= '2025-01-01' AND date(started) <= '2025-01-31';"
    )
    assert {q.expect_index for q in m.queries} == set(m.created_index_names())


def test_transaction_lines_are_dropped_and_statements_split(tmp_path: Path) -> None:
    d = migrations_dir(
        tmp_path,
        {
            "002_t.sql": "-- migrate:up\nBEGIN TRANSACTION;\nCREATE TABLE x (a); -- c;\n"
            "CREATE TRIGGER tr AFTER INSERT ON x BEGIN UPDATE x SET a = 1; END;\n"
            "/* ; */ COMMIT;\n-- migrate:down\nBEGIN;\nDROP TABLE x;\nEND TRANSACTION;\n"
        },
    )
    m = mig.load_migrations(d)[0]
    assert m.up == (
        "CREATE TABLE x (a)",
        "CREATE TRIGGER tr AFTER INSERT ON x BEGIN UPDATE x SET a = 1; END",
    )
    assert m.down == ("DROP TABLE x",)
    assert m.checksum == hashlib.sha256((d / "002_t.sql").read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"2_x.sql": "-- migrate:up\nSELECT 1;"},
            "Migration file 2_x.sql is misnamed: migration files are named NNN_slug.sql "
            "(digits, underscore, lowercase). Try: rename it, for example 002_add_invoice_index.sql",
        ),
        (
            {"002_x.sql": "CREATE TABLE a (b);"},
            "Migration 002_x.sql has no '-- migrate:up' section: liteshift cannot tell which statements "
            "apply the migration (a directive counts only at the start of a line). Try: put "
            "'-- migrate:up' on its own line above the statements and '-- migrate:down' above the undo",
        ),
        (
            {"002_x.sql": "-- migrate:up\nVACUUM;"},
            "002_x.sql (up) contains VACUUM: liteshift runs each migration inside one transaction it "
            "owns. Try: remove that statement from the migration",
        ),
        (
            {"002_x.sql": "-- migrate:up\nCREATE TABLE a (b)"},
            "002_x.sql (up) ends with an incomplete statement: no closing ';' after: "
            "'CREATE TABLE a (b)'. Try: end every statement with a semicolon",
        ),
        (
            {"002_a.sql": "-- migrate:up\nSELECT 1;", "002_b.sql": "-- migrate:up\nSELECT 1;"},
            "Two migrations share version 002: 002_a.sql and 002_b.sql. Try: give each migration its "
            "own number",
        ),
    ],
)
def test_bad_migration_files_are_refused(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(BadInput) as err:
        mig.load_migrations(migrations_dir(tmp_path, files))
    assert str(err.value) == message


def test_rehearsal_names_the_missing_column(make_db, tmp_path: Path) -> None:
    db = make_db()
    d = migrations_dir(tmp_path, {"002_x.sql": "-- migrate:up\nCREATE INDEX i ON worklogs(nope);\n"})
    with sqlite3.connect(db) as con, pytest.raises(BadInput) as err:
        rehearse(con, mig.load_migrations(d))
    assert str(err.value) == (
        "Migration 002_x.sql fails on this database's schema: no such column: nope in: "
        "CREATE INDEX i ON worklogs(nope). Try: fix the migration (or the --database path); "
        "nothing was written"
    )


def test_drift_names_file_and_both_checksums(make_db, tmp_path: Path) -> None:
    d = migrations_dir(tmp_path, {"002_x.sql": "-- migrate:up\nCREATE TABLE a (b);\n"})
    m = mig.load_migrations(d)[0]
    applied = {"002": tracking.TrackingRow("002", "x", "0" * 64, "2026-01-01", "b", None, None)}
    with pytest.raises(ChecksumDrift) as err:
        tracking.check_drift([m], applied)
    assert str(err.value) == (
        f"Migration 002_x.sql changed after it was applied: applied checksum {'0' * 64}, file checksum "
        f"now {m.checksum}. Try: restore the file as it was applied, or write the change as a new migration"
    )


def test_rehearsal_copes_with_virtual_tables_and_their_shadow_tables(make_db, tmp_path: Path) -> None:
    db = make_db()
    with sqlite3.connect(db) as con:
        con.execute("CREATE VIRTUAL TABLE notes_fts USING fts5(body)")
        con.execute("CREATE TABLE seq_demo (id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
        d = migrations_dir(tmp_path, {"002_x.sql": "-- migrate:up\nCREATE INDEX i ON seq_demo(v);\n"})
        rehearsal = rehearse(con, mig.load_migrations(d))
    assert rehearsal.indexes["i"].describe() == "seq_demo(v)"


def test_a_directive_counts_only_at_the_start_of_a_line(tmp_path: Path) -> None:
    d = migrations_dir(
        tmp_path,
        {
            "001_c.sql": "-- migrate:up\nCREATE TABLE notes (body TEXT DEFAULT ' -- migrate:down ');\n"
            "INSERT INTO notes VALUES ('x'); -- migrate:down is not a directive here\n"
            "-- migrate:down\nDROP TABLE notes;\n"
        },
    )
    m = mig.load_migrations(d)[0]
    assert m.up == (
        "CREATE TABLE notes (body TEXT DEFAULT ' -- migrate:down ')",
        "INSERT INTO notes VALUES ('x')",
    )
    assert m.down == ("DROP TABLE notes",)


def test_a_misspelt_fault_point_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from liteshift.core import faults

    with pytest.raises(faults.UnknownPoint):
        faults.point("backup-copyed")  # type: ignore[arg-type]
    monkeypatch.setenv(faults.ENV, "no-such-point")
    with pytest.raises(faults.UnknownPoint, match="LITESHIFT_KILL_AT='no-such-point' names no fault point"):
        faults.point("validate-start")
