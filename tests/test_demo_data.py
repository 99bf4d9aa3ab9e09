"""The demo data satisfies the phase-2 (multi-tenant) constraints, row by row, and is deterministic.

Each rule is the plain SQL query of its violations (the negation of the migration's constraint).
Every test also shows that its query can fail: one violating row inserted into the test's own
copy of the database makes the count exactly 1.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

import liteshift.demo
from liteshift.demo import build_demo_db

ROWS = 2000

# Rule 1: a worklog's team belongs to the worklog's company -- FOREIGN KEY (company_id, team_id)
# REFERENCES teams(company_id, id). Like SQLite, a NULL team_id is not checked.
WORKLOG_TEAM_OUTSIDE_COMPANY = """
SELECT count(*) FROM worklogs AS w
WHERE w.company_id IS NOT NULL AND w.team_id IS NOT NULL
AND NOT EXISTS (SELECT 1 FROM teams AS t WHERE t.company_id = w.company_id AND t.id = w.team_id)
"""
# Rule 2: CHECK (time_spent_seconds > 0).
NON_POSITIVE_TIME = "SELECT count(*) FROM worklogs WHERE NOT (time_spent_seconds > 0)"
# Rule 3: started is ISO-8601 text.
STARTED_NOT_ISO = """
SELECT count(*) FROM worklogs
WHERE NOT (typeof(started) = 'text' AND started GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]*')
"""
# Rule 4: CHECK (end_date >= start_date) and CHECK (status IN (...)).
BAD_LEAVES = """
SELECT count(*) FROM factorial_leaves
WHERE NOT (end_date >= start_date AND status IN ('approved', 'pending', 'rejected', 'cancelled'))
"""
# Rule 5: UNIQUE (billing_project_id, user_email, issue_type): rows repeating an earlier row's triple.
DUPLICATE_RATES = """
SELECT count(*) FROM billing_rates AS b
WHERE EXISTS (
    SELECT 1 FROM billing_rates AS o
    WHERE o.billing_project_id = b.billing_project_id AND o.user_email = b.user_email
    AND o.issue_type = b.issue_type AND o.id < b.id
)
"""
# Not a phase-2 rule yet, but the same tenancy: an invoice's billing project is its company's.
INVOICE_PROJECT_OUTSIDE_COMPANY = """
SELECT count(*) FROM invoices AS i
WHERE NOT EXISTS (
    SELECT 1 FROM billing_projects AS p WHERE p.company_id = i.company_id AND p.id = i.billing_project_id
)
"""


def count(db: Path, sql: str) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute(sql).fetchone()[0])
    finally:
        con.close()


def execute(db: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    con = sqlite3.connect(db)
    try:
        with con:
            con.execute(sql, params)
    finally:
        con.close()


def insert_worklog(db: Path, **values: object) -> None:
    """Insert a valid worklog of company 1 and one of its teams, with `values` overriding columns."""
    team = count(db, "SELECT min(id) FROM teams WHERE company_id = 1")
    row: dict[str, object] = {
        "company_id": 1,
        "team_id": team,
        "jira_instance": "Company Main",
        "author_email": "user@example.com",
        "issue_key": "PRJ-1",
        "started": "2025-01-15 10:00:00",
        "time_spent_seconds": 3600,
        "comment": "test row",
    }
    row.update(values)
    execute(
        db,
        f"INSERT INTO worklogs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
        tuple(row.values()),
    )


def test_worklog_teams_belong_to_the_worklog_company(make_db) -> None:
    db = make_db(rows=ROWS)
    assert count(db, "SELECT count(*) FROM worklogs") == ROWS
    assert count(db, "SELECT count(*) FROM worklogs WHERE team_id IS NOT NULL") == ROWS
    assert count(db, WORKLOG_TEAM_OUTSIDE_COMPANY) == 0
    # the composite foreign key's parent index can be created
    execute(db, "CREATE UNIQUE INDEX idx_teams_company_id ON teams(company_id, id)")

    insert_worklog(db)
    assert count(db, WORKLOG_TEAM_OUTSIDE_COMPANY) == 0
    other_team = count(db, "SELECT min(id) FROM teams WHERE company_id <> 1")
    insert_worklog(db, team_id=other_team)
    assert count(db, WORKLOG_TEAM_OUTSIDE_COMPANY) == 1


def test_worklog_time_spent_is_positive(make_db) -> None:
    db = make_db(rows=ROWS)
    assert count(db, "SELECT count(*) FROM worklogs") == ROWS
    assert count(db, NON_POSITIVE_TIME) == 0

    insert_worklog(db, time_spent_seconds=0)
    assert count(db, NON_POSITIVE_TIME) == 1


def test_worklog_started_is_iso8601_text(make_db) -> None:
    db = make_db(rows=ROWS)
    assert count(db, "SELECT count(*) FROM worklogs") == ROWS
    assert count(db, STARTED_NOT_ISO) == 0
    # exactly what datetime() writes, so the report's text ranges select by date
    assert count(db, "SELECT count(*) FROM worklogs WHERE started IS NOT datetime(started)") == 0
    in_january = "SELECT count(*) FROM worklogs WHERE started >= '2025-01-01' AND started < '2025-02-01'"
    assert count(db, in_january) > 0

    insert_worklog(db, started="01/15/2025 10:00")
    assert count(db, STARTED_NOT_ISO) == 1


def test_leaves_end_after_they_start_with_a_known_status(make_db) -> None:
    db = make_db(rows=ROWS)
    assert count(db, "SELECT count(*) FROM factorial_leaves") > 0
    assert count(db, BAD_LEAVES) == 0
    statuses = "SELECT count(DISTINCT status) FROM factorial_leaves"
    assert count(db, statuses) == 4

    insert = (
        "INSERT INTO factorial_leaves (company_id, user_id, status, start_date, end_date) "
        "VALUES (1, 1, ?, ?, ?)"
    )
    execute(db, insert, ("approved", "2025-01-10", "2025-01-09"))
    assert count(db, BAD_LEAVES) == 1
    execute(db, "DELETE FROM factorial_leaves WHERE id = (SELECT max(id) FROM factorial_leaves)")
    execute(db, insert, ("maybe", "2025-01-10", "2025-01-10"))
    assert count(db, BAD_LEAVES) == 1


def test_billing_rates_are_unique_per_project_user_and_issue_type(make_db) -> None:
    db = make_db(rows=ROWS)
    assert count(db, "SELECT count(*) FROM billing_rates") == 1000
    assert count(db, DUPLICATE_RATES) == 0

    execute(
        db,
        "INSERT INTO billing_rates (billing_project_id, user_email, issue_type, rate_cents) "
        "SELECT billing_project_id, user_email, issue_type, rate_cents + 1 FROM billing_rates WHERE id = 1",
    )
    assert count(db, DUPLICATE_RATES) == 1


def test_billing_rates_stay_unique_beyond_the_user_pool(tmp_path: Path, monkeypatch) -> None:
    """More rates than projects x users x issue types: the pool of rate users widens (10M rows)."""
    monkeypatch.setattr(liteshift.demo, "PROJECTS", 3)
    monkeypatch.setattr(liteshift.demo, "USERS", 7)
    db = build_demo_db(tmp_path / "small-pool.db", ROWS, wal=False)
    assert count(db, "SELECT count(*) FROM billing_rates") == 1000  # > 3 x 7 x 5 = 105
    assert count(db, DUPLICATE_RATES) == 0
    assert count(db, "SELECT count(DISTINCT user_email) FROM billing_rates") == 1000 // (3 * 5) + 1
    assert count(db, "SELECT count(*) FROM billing_rates WHERE user_email = 'user@example.com'") > 0


def test_invoice_projects_belong_to_the_invoice_company(make_db) -> None:
    db = make_db(rows=ROWS)
    assert count(db, "SELECT count(*) FROM invoices") > 0
    assert count(db, INVOICE_PROJECT_OUTSIDE_COMPANY) == 0

    project = count(db, "SELECT min(id) FROM billing_projects WHERE company_id <> 1")
    execute(
        db,
        "INSERT INTO invoices (company_id, billing_project_id, period, total_cents) "
        "VALUES (1, ?, '2025-01', 100)",
        (project,),
    )
    assert count(db, INVOICE_PROJECT_OUTSIDE_COMPANY) == 1


def worklogs_digest(db: Path) -> str:
    digest = hashlib.sha256()
    con = sqlite3.connect(db)
    try:
        for row in con.execute("SELECT * FROM worklogs ORDER BY id"):
            digest.update(repr(row).encode())
    finally:
        con.close()
    return digest.hexdigest()


@pytest.mark.parametrize("seed", [1, 7])
def test_same_seed_gives_the_same_worklogs(tmp_path: Path, seed: int) -> None:
    first = build_demo_db(tmp_path / "first.db", ROWS, seed=seed, wal=False)
    second = build_demo_db(tmp_path / "second.db", ROWS, seed=seed, wal=False)
    other = build_demo_db(tmp_path / "other.db", ROWS, seed=seed + 1, wal=False)
    assert worklogs_digest(first) == worklogs_digest(second)
    assert worklogs_digest(first) != worklogs_digest(other)
