"""A realistic, deterministic worklog database for the demo, the tests and the benchmarks."""

from __future__ import annotations

import math
from pathlib import Path

import sqlite_utils

from liteshift.core.db import connection

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
ISSUE_TYPES = ("Bug", "Story", "Task", "Epic", "Spike")
# Knuth's multiplicative-hash constant (a prime), used to scatter billing-rate triples.
_SCATTER = 2654435761


def _numbers(count: int) -> str:
    """A recursive CTE yielding n = 1..count."""
    return f"WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {int(count)}) "


def _mix(seed: int, salt: int) -> str:
    """A deterministic pseudo-random non-negative integer expression of n."""
    multiplier = 2654435761 + 40503 * salt
    return f"(((n + {seed * 7919}) * {multiplier}) % 4294967291)"


def _email(expr: str, users: int = USERS) -> str:
    # user #0 is the report's 'user@example.com', so its queries find rows.
    return (
        f"CASE ({expr}) % {users} WHEN 0 THEN 'user@example.com' "
        f"ELSE 'user' || (({expr}) % {users}) || '@example.com' END"
    )


def _company_of(parent_id: str) -> str:
    """The company owning team / billing project number `parent_id` (one formula for both sides).

    Children (worklogs, invoices) pick their parent first and take its company from this same
    expression, so a row's company always equals its parent's company (the phase-2 composite
    foreign keys, e.g. worklogs(company_id, team_id) -> teams(company_id, id)).
    """
    return f"(1 + ({parent_id}) % {COMPANIES})"


def _issue_type(expr: str) -> str:
    whens = " ".join(f"WHEN {i} THEN '{name}'" for i, name in enumerate(ISSUE_TYPES))
    return f"CASE {expr} {whens} END"


def _billing_rate_triples(side: int, seed: int) -> tuple[str, str, str]:
    """SQL expressions of n for (billing_project_id, user_email, issue_type), distinct for n = 1..side.

    Each n is mapped to a combination number k = ((n + offset) * a) % combos, where a is coprime
    to combos: a bijection of the integers modulo combos, so distinct n <= combos give distinct k
    and so distinct triples (phase 2's UNIQUE (billing_project_id, user_email, issue_type)). k is
    then read as mixed-radix digits: project = k % PROJECTS (lowest), user = (k / PROJECTS) %
    users, issue type = k / (PROJECTS * users) (highest), which scatters all three.

    PROJECTS x USERS x 5 issue types = 500,000 combinations. Up to that many rates (rows <= ~2M)
    the user pool is the same 500 users as the worklogs' authors. Beyond it (10M rows -> 2.5M
    rates) the pool of rate users widens to ceil(side / (PROJECTS * 5)) -- 'user500@...' and up,
    who log no work -- rather than capping the table, so billing_rates keeps its rows // 4 size
    in the benchmarks, and 'user@example.com' (user #0) still has rates.
    """
    per_user = PROJECTS * len(ISSUE_TYPES)
    users = max(USERS, -(-side // per_user))
    combos = per_user * users
    multiplier = _SCATTER
    while math.gcd(multiplier, combos) != 1:
        multiplier += 1
    k = f"(((n + {(seed * 7919) % combos}) * {multiplier}) % {combos})"
    return (
        f"1 + {k} % {PROJECTS}",
        _email(f"{k} / {PROJECTS}", users),
        _issue_type(f"{k} / {PROJECTS * users}"),
    )


def fill(con_path: Path, rows: int, seed: int) -> None:
    """Insert the rows of every table in one transaction.

    The data already satisfies the phase-2 (multi-tenant) constraints: a worklog's team and an
    invoice's billing project belong to the row's company; time_spent_seconds >= 60; started is
    'YYYY-MM-DD HH:MM:SS' text; a leave ends 1-10 days after it starts, with one of the four
    statuses; (billing_project_id, user_email, issue_type) is unique in billing_rates.
    """
    with connection(con_path) as con:
        con.execute("BEGIN IMMEDIATE")
        con.execute(_numbers(COMPANIES) + "INSERT INTO companies SELECT n, 'Company ' || n FROM seq")
        con.execute(
            _numbers(TEAMS) + f"INSERT INTO teams SELECT n, {_company_of('n')}, 'Team ' || n FROM seq"
        )
        con.execute(
            _numbers(PROJECTS)
            + f"INSERT INTO billing_projects SELECT n, {_company_of('n')}, 'Project ' || n FROM seq"
        )
        team = f"1 + {_mix(seed, 1)} % {TEAMS}"
        con.execute(
            _numbers(rows) + "INSERT INTO worklogs SELECT n, "
            f"{_company_of(team)}, {team}, "
            f"CASE {_mix(seed, 2)} % 3 WHEN 0 THEN 'Company Main' WHEN 1 THEN 'Company Support' "
            "ELSE 'Company Ops' END, "
            f"{_email(_mix(seed, 3))}, 'PRJ-' || (1 + {_mix(seed, 4)} % 5000), "
            f"datetime('2024-01-01', '+' || ({_mix(seed, 5)} % 63072000) || ' seconds'), "
            f"60 * (1 + {_mix(seed, 6)} % 480), 'worked on ticket ' || n FROM seq"
        )
        side = max(1000, rows // 4)
        project, email, issue_type = _billing_rate_triples(side, seed)
        con.execute(
            _numbers(side) + f"INSERT INTO billing_rates SELECT n, {project}, {email}, {issue_type}, "
            f"1000 + {_mix(seed, 10)} % 20000 FROM seq"
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
            f"{_company_of(f'1 + n % {PROJECTS}')}, 1 + n % {PROJECTS}, "
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
