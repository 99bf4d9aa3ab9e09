"""A realistic, deterministic worklog database for the demo, the tests and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from liteshift.db import connection

# (table, columns, not-null columns, foreign keys): the shape of the phase-1 worklog database.
TABLES: list[tuple[str, dict[str, type], set[str], list[tuple[str, str, str]]]] = [
    ("companies", {"id": int, "name": str}, {"name"}, []),
    (
        "teams",
        {"id": int, "company_id": int, "name": str},
        {"company_id", "name"},
        [("company_id", "companies", "id")],
    ),
    (
        "worklogs",
        {
            "id": int,
            "company_id": int,
            "team_id": int,
            "jira_instance": str,
            "author_email": str,
            "issue_key": str,
            "started": str,
            "time_spent_seconds": int,
            "comment": str,
        },
        {"company_id", "jira_instance", "author_email", "issue_key", "started", "time_spent_seconds"},
        [("company_id", "companies", "id"), ("team_id", "teams", "id")],
    ),
    (
        "billing_projects",
        {"id": int, "company_id": int, "name": str},
        {"company_id", "name"},
        [("company_id", "companies", "id")],
    ),
    (
        "billing_rates",
        {"id": int, "billing_project_id": int, "user_email": str, "issue_type": str, "rate_cents": int},
        {"billing_project_id", "user_email", "issue_type", "rate_cents"},
        [("billing_project_id", "billing_projects", "id")],
    ),
    (
        "factorial_leaves",
        {"id": int, "company_id": int, "user_id": int, "status": str, "start_date": str, "end_date": str},
        {"company_id", "user_id", "status", "start_date", "end_date"},
        [("company_id", "companies", "id")],
    ),
    (
        "invoices",
        {"id": int, "company_id": int, "billing_project_id": int, "period": str, "total_cents": int},
        {"company_id", "billing_project_id", "period", "total_cents"},
        [("company_id", "companies", "id"), ("billing_project_id", "billing_projects", "id")],
    ),
]
# The indexes an application would already have before phase 1 (foreign-key lookups).
EXISTING_INDEXES = [
    ("worklogs", ["company_id"], "idx_worklogs_company"),
    ("billing_rates", ["billing_project_id"], "idx_billing_rates_project"),
]


def create_schema(path: Path) -> None:
    """Create the demo tables and their pre-phase-1 indexes with sqlite-utils."""
    db = sqlite_utils.Database(path)
    try:
        for name, columns, not_null, fks in TABLES:
            db[name].create(columns, pk="id", not_null=not_null, foreign_keys=fks)  # type: ignore[union-attr]
        for table, cols, index_name in EXISTING_INDEXES:
            db[table].create_index(cols, index_name=index_name)  # type: ignore[union-attr]
    finally:
        db.close()


COMPANIES = 20
TEAMS = 100
PROJECTS = 200
USERS = 500


def _numbers(count: int) -> str:
    """A recursive CTE yielding n = 1..count."""
    return f"WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {int(count)}) "


def _mix(seed: int, salt: int) -> str:
    """A deterministic pseudo-random non-negative integer expression of n."""
    multiplier = 2654435761 + 40503 * salt
    return f"(((n + {seed * 7919}) * {multiplier}) % 4294967291)"


def _email(expr: str) -> str:
    # user #0 is the report's 'user@example.com', so its queries find rows.
    return (
        f"CASE ({expr}) % {USERS} WHEN 0 THEN 'user@example.com' "
        f"ELSE 'user' || (({expr}) % {USERS}) || '@example.com' END"
    )


def fill(con_path: Path, rows: int, seed: int) -> None:
    """Insert the rows of every table in one transaction."""
    with connection(con_path) as con:
        con.execute("BEGIN IMMEDIATE")
        con.execute(_numbers(COMPANIES) + "INSERT INTO companies SELECT n, 'Company ' || n FROM seq")
        con.execute(
            _numbers(TEAMS) + f"INSERT INTO teams SELECT n, 1 + n % {COMPANIES}, 'Team ' || n FROM seq"
        )
        con.execute(
            _numbers(PROJECTS) + f"INSERT INTO billing_projects SELECT n, "
            f"1 + n % {COMPANIES}, 'Project ' || n FROM seq"
        )
        r = _mix(seed, 1)
        con.execute(
            _numbers(rows) + "INSERT INTO worklogs SELECT n, "
            f"1 + {r} % {COMPANIES}, 1 + {r} % {TEAMS}, "
            f"CASE {_mix(seed, 2)} % 3 WHEN 0 THEN 'Company Main' WHEN 1 THEN 'Company Support' "
            "ELSE 'Company Ops' END, "
            f"{_email(_mix(seed, 3))}, 'PRJ-' || (1 + {_mix(seed, 4)} % 5000), "
            f"datetime('2024-01-01', '+' || ({_mix(seed, 5)} % 63072000) || ' seconds'), "
            f"60 * (1 + {_mix(seed, 6)} % 480), 'worked on ticket ' || n FROM seq"
        )
        side = max(1000, rows // 4)
        con.execute(
            _numbers(side) + "INSERT INTO billing_rates SELECT n, "
            f"1 + {_mix(seed, 7)} % {PROJECTS}, {_email(_mix(seed, 8))}, "
            f"CASE {_mix(seed, 9)} % 5 WHEN 0 THEN 'Bug' WHEN 1 THEN 'Story' WHEN 2 THEN 'Task' "
            f"WHEN 3 THEN 'Epic' ELSE 'Spike' END, 1000 + {_mix(seed, 10)} % 20000 FROM seq"
        )
        con.execute(
            _numbers(side) + "INSERT INTO factorial_leaves SELECT n, "
            f"1 + {_mix(seed, 11)} % {COMPANIES}, 1 + {_mix(seed, 12)} % 2000, "
            f"CASE {_mix(seed, 13)} % 4 WHEN 0 THEN 'approved' WHEN 1 THEN 'pending' "
            "WHEN 2 THEN 'rejected' ELSE 'cancelled' END, "
            f"date('2024-01-01', '+' || ({_mix(seed, 14)} % 730) || ' days'), "
            f"date('2024-01-01', '+' || ({_mix(seed, 14)} % 730 + 1 + {_mix(seed, 15)} % 10) "
            "|| ' days') FROM seq"
        )
        con.execute(
            _numbers(max(100, rows // 20)) + "INSERT INTO invoices SELECT n, "
            f"1 + n % {COMPANIES}, 1 + n % {PROJECTS}, "
            f"strftime('%Y-%m', date('2024-01-01', '+' || (n % 24) || ' months')), "
            f"{_mix(seed, 16)} % 10000000 FROM seq"
        )
        con.execute("COMMIT")


def build_demo_db(path: Path, rows: int = 100_000, seed: int = 1, wal: bool = True) -> Path:
    """Create a fresh worklog database at path with `rows` worklogs (refuses to overwrite)."""
    if path.exists():
        raise FileExistsError(f"{path} exists; liteshift demo never overwrites a database")
    path.parent.mkdir(parents=True, exist_ok=True)
    with connection(path) as con:
        if wal:
            con.execute("PRAGMA journal_mode = WAL")
    create_schema(path)
    fill(path, rows, seed)
    with connection(path) as con:
        con.execute("ANALYZE")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path
