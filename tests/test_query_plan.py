"""Step 6: EXPLAIN QUERY PLAN parsed, expected index enforced, function-wrapped columns flagged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from liteshift.core.errors import CheckFailed
from liteshift.core.migrations import Query
from liteshift.core.plans import explain
from liteshift.tasks.migrate import apply_migrations
from liteshift.tasks.query_plan import check_query_plans, range_rewrite, time_pair

Q_USER = Query(
    "user_worklogs_range",
    "SELECT * FROM worklogs WHERE company_id = 1 AND author_email = 'user@example.com' "
    "AND date(started) >= '2025-01-01' AND date(started) <= '2025-01-31';",
    "idx_worklogs_user_range",
)


@pytest.fixture
def migrated(make_db, config):
    db = make_db()
    apply_migrations(config(db))
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
    [result] = check_query_plans(config(migrated), [Q_USER])
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
    q = Query("by_comment", "SELECT * FROM worklogs WHERE comment = 'x'", "idx_worklogs_user_range")
    with pytest.raises(CheckFailed) as err:
        check_query_plans(config(migrated), [q])
    assert str(err.value) == (
        "Query by_comment does not use index idx_worklogs_user_range: plan is SCAN worklogs: the "
        "index does not serve the query it was added for. Try: fix the query or the index; the "
        "migration will be rolled back"
    )
    [warned] = check_query_plans(config(migrated, plan_check="warn"), [q])
    assert warned.warnings[0].startswith("Query by_comment does not use index idx_worklogs_user_range")


def test_before_is_timed_on_the_backup_interleaved_with_after(
    make_db, config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import liteshift.tasks.query_plan as qp
    from liteshift.tasks.backup import backup_database

    db = make_db()
    cfg = config(db, bench_min_runs=5)
    b = backup_database(cfg)
    apply_migrations(cfg)
    seen: list[tuple[str, str, str]] = []
    real_pair = qp.time_pair

    def spy(before, after, sql, c):  # which files the two sides read, and their plans
        seen.append(
            (
                before.execute("PRAGMA database_list").fetchone()[2],
                *("; ".join(qp.explain(con, sql).detail) for con in (before, after)),
            )
        )
        return real_pair(before, after, sql, c)

    monkeypatch.setattr(qp, "time_pair", spy)
    [result] = check_query_plans(cfg, [Q_USER], b.path)
    assert seen == [
        (
            b.path,
            "SEARCH worklogs USING INDEX idx_worklogs_company (company_id=?)",
            "SEARCH worklogs USING INDEX idx_worklogs_user_range (company_id=? AND author_email=?)",
        )
    ]
    assert result.before is not None and result.after is not None
    assert result.before.runs >= 5 and result.after.runs >= 5
    # the backup is opened immutable: nothing is left beside it
    assert sorted(p.name for p in tmp_path.iterdir() if "backup" in p.name) == [Path(b.path).name]


def test_a_pair_samples_both_sides_alike(make_db, config) -> None:
    import sqlite3

    db = make_db()
    con = sqlite3.connect(db)
    cfg = config(db, bench_min_runs=5, bench_max_runs=5, bench_budget_s=0.0)
    before, after = time_pair(con, con, Q_USER.sql, cfg)
    # turns alternate until each side has its runs; max runs caps both alike
    assert (before.runs // before.batch, after.runs // after.batch) == (5, 5)
    assert 0 <= before.p50_ms <= before.p95_ms
