"""Step 6: EXPLAIN QUERY PLAN parsed, expected index enforced, function-wrapped columns flagged."""

from __future__ import annotations

import sqlite3

import pytest

from liteshift import migrations as mig
from liteshift.errors import CheckFailed
from tasks.migrate import migrate_database
from tasks.query_plan import check_query_plans, explain, measure_before, range_rewrite

Q_USER = mig.Query(
    "user_worklogs_range",
    "SELECT * FROM worklogs WHERE company_id = 1 AND author_email = 'user@example.com' "
    "AND date(started) >= '2025-01-01' AND date(started) <= '2025-01-31';",
    "idx_worklogs_user_range",
)


@pytest.fixture
def migrated(make_db, config):
    db = make_db()
    migrate_database(config(db))
    return db


def test_plan_parsing_equality_and_range(migrated) -> None:
    with sqlite3.connect(migrated) as con:
        plan = explain(
            con, "SELECT * FROM worklogs WHERE company_id = 1 AND author_email = 'a' AND started > '2025'"
        )
        scan = explain(con, "SELECT * FROM worklogs WHERE comment = 'x'")
    assert (plan.index, plan.equality, plan.range) == (
        "idx_worklogs_user_range",
        ["company_id", "author_email"],
        ["started"],
    )
    assert (scan.index, scan.full_scan, scan.detail) == (None, True, ["SCAN worklogs"])


def test_date_wrapped_column_uses_only_the_prefix_and_gets_a_suggestion(migrated, config) -> None:
    [result] = check_query_plans(config(migrated), [Q_USER], {})
    assert result.plan.index == "idx_worklogs_user_range"
    assert result.plan.equality == ["company_id", "author_email"]
    assert result.plan.range == []
    assert result.warnings == [
        "user_worklogs_range uses only (company_id, author_email) of idx_worklogs_user_range: column "
        "started is wrapped in a function, so the index cannot serve the range on it"
    ]
    assert result.suggestion == (
        "SELECT * FROM worklogs WHERE company_id = 1 AND author_email = 'user@example.com' "
        "AND started >= '2025-01-01' AND started < '2025-02-01'"
    )
    assert result.suggestion_plan is not None and result.suggestion_plan.range == ["started"]
    assert result.after is not None and result.after.runs >= 3


def test_range_rewrite_keeps_the_same_rows(migrated) -> None:
    rewritten = range_rewrite(Q_USER.sql)
    assert rewritten is not None
    for op_sql in (
        "date(started) > '2025-03-01'",
        "date(started) = '2025-03-01'",
        "date(started) < '2025-03-01'",
    ):
        q = f"SELECT id FROM worklogs WHERE {op_sql} ORDER BY id"
        with sqlite3.connect(migrated) as con:
            assert con.execute(q).fetchall() == con.execute(str(range_rewrite(q))).fetchall()


def test_expected_index_not_used_fails_or_warns(migrated, config) -> None:
    q = mig.Query("by_comment", "SELECT * FROM worklogs WHERE comment = 'x'", "idx_worklogs_user_range")
    with pytest.raises(CheckFailed) as err:
        check_query_plans(config(migrated), [q], {})
    assert str(err.value) == (
        "Query by_comment does not use index idx_worklogs_user_range: plan is SCAN worklogs: the "
        "index does not serve the query it was added for. Try: fix the query or the index; the "
        "migration will be rolled back"
    )
    [warned] = check_query_plans(config(migrated, plan_check="warn"), [q], {})
    assert warned.warnings[0].startswith("Query by_comment does not use index idx_worklogs_user_range")


def test_before_timings_count_their_runs(make_db, config) -> None:
    db = make_db()
    timings = measure_before(config(db, bench_min_runs=5), [Q_USER])
    t = timings["user_worklogs_range"]
    assert t.runs == 5
    assert 0 <= t.p50_ms <= t.p95_ms
