"""Database health: measured read-only, judged against thresholds, remembered in a history file."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import PROJECT_MIGRATIONS

from liteshift.core.errors import BadInput
from liteshift.core.names import db_key
from liteshift.health import measure as measure_module
from liteshift.health.history import History, history_path
from liteshift.health.measure import measure, plan_problem
from liteshift.health.model import Finding, HealthReport
from liteshift.health.render import render_markdown, table_rows
from liteshift.health.thresholds import Thresholds
from liteshift.tasks.migrate import apply_migrations

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SMALL = Thresholds(index_min_bytes=64 * 1024)  # the test databases' indexes are a few hundred KB


def run(db: Path, tmp_path: Path, thresholds: Thresholds = SMALL, **kw: object) -> HealthReport:
    """measure() with the project's migration 001 and a short query budget."""
    kw.setdefault("query_budget_s", 0.02)
    return measure(
        db, migrations_dir=PROJECT_MIGRATIONS, report_dir=tmp_path / "reports", thresholds=thresholds, **kw
    )  # type: ignore[arg-type]


def find(report: HealthReport, metric: str, obj: str | None = None) -> list[Finding]:
    return [f for f in report.findings if f.metric == metric and (obj is None or f.object == obj)]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(db: Path, *sql: str) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    for s in sql:
        con.execute(s)
    con.close()


# ---------------------------------------------------------------------------------------------
# Thresholds


def test_threshold_defaults_are_the_reports_values() -> None:
    assert Thresholds().model_dump() == {
        "query_slow_p95_ms": 500,
        "query_critical_ms": 5000,
        "size_warning_bytes": 2 * 1024**3,
        "size_critical_bytes": 4 * 1024**3,
        "index_unused_warning_pct": 15,
        "index_unused_critical_pct": 50,
        "index_min_bytes": 1024**2,
        "freelist_warning_pct": 20,
        "freelist_critical_pct": 50,
        "stats_drift_ratio": 0.2,
        "days_left_warning": 30,
        "error_rate_warning_pct": 10,
        "error_rate_critical_pct": 50,
    }
    assert all(f.description for f in Thresholds.model_fields.values())
    assert Thresholds.from_parameters({"freelist_warning_pct": None}) == Thresholds()


@pytest.mark.parametrize("warning", [50, 60])
def test_a_warning_not_below_its_critical_is_refused(warning: int) -> None:
    with pytest.raises(BadInput) as exc:
        Thresholds.from_parameters({"index_unused_warning_pct": warning, "index_unused_critical_pct": 50})
    assert str(exc.value) == (
        f"Invalid thresholds: index_unused_warning_pct ({float(warning)}) must be below "
        "index_unused_critical_pct (50.0). Try: lower the warning threshold or raise the critical one; "
        "a warning must be below it"
    )


def test_an_unknown_or_bad_threshold_names_the_field() -> None:
    with pytest.raises(BadInput, match=r"^Invalid parameter size_warning_bytes: Input should be greater"):
        Thresholds.from_parameters({"size_warning_bytes": 0})
    with pytest.raises(BadInput, match=r"^Invalid parameter bogus: Extra inputs are not permitted"):
        Thresholds.from_parameters({"bogus": 1})


# ---------------------------------------------------------------------------------------------
# Index bloat


def test_random_deletes_flag_that_index_only_and_reindex_recovers(make_db, tmp_path: Path) -> None:
    db = make_db(50_000)
    write(db, "REINDEX")  # start from packed indexes: the demo's grow by inserts (14-16% unused)
    history = History(tmp_path / "h.db")
    before = run(db, tmp_path)
    assert {f.object: f.severity for f in find(before, "index_unused_pct")} == {
        "idx_billing_rates_project": "ok",
        "idx_worklogs_company": "ok",
    }
    history.transitions(before.key, before.findings)

    gone = random.Random(7).sample(range(1, 50_001), 20_000)  # 40% of worklogs, scattered
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN")
    con.executemany("DELETE FROM worklogs WHERE id = ?", [(i,) for i in gone])
    con.execute("COMMIT")
    con.execute("ANALYZE")  # keep the statistics current: this test is about the index alone
    con.close()

    bloated = run(db, tmp_path)
    breaches = bloated.breaches()
    assert [(f.metric, f.object, f.severity, f.action) for f in breaches] == [
        ("index_unused_pct", "idx_worklogs_company", "warning", "reindex")
    ]
    assert 35 < breaches[0].value < 50  # type: ignore[operator]
    assert breaches[0].threshold == 15
    assert history.transitions(bloated.key, bloated.findings) == [(breaches[0], "breached")]
    assert history.transitions(bloated.key, run(db, tmp_path).findings) == []

    write(db, "REINDEX idx_worklogs_company")
    repaired = run(db, tmp_path)
    [finding] = find(repaired, "index_unused_pct", "idx_worklogs_company")
    assert finding.severity == "ok" and finding.value < 5  # type: ignore[operator]
    assert history.transitions(repaired.key, repaired.findings) == [(finding, "recovered")]


def test_indexes_below_the_minimum_size_are_not_judged(make_db, tmp_path: Path) -> None:
    report = run(make_db(), tmp_path, Thresholds())  # 2,000 rows: every index is under 1 MiB
    assert report.indexes and all(i.bytes and i.bytes < 1024**2 for i in report.indexes)
    assert find(report, "index_unused_pct") == []


def test_without_dbstat_index_bloat_is_unavailable_never_ok(make_db, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(measure_module, "dbstat_available", lambda con: False)
    report = run(make_db(), tmp_path)
    assert [(f.metric, f.severity) for f in find(report, "dbstat")] == [("dbstat", "unavailable")]
    assert "no dbstat" in find(report, "dbstat")[0].message
    assert find(report, "index_unused_pct") == []
    assert report.indexes and all(i.bytes is None and i.unused_pct is None for i in report.indexes)


# ---------------------------------------------------------------------------------------------
# Read-only: no byte changed, writers never held up


def test_measure_changes_no_byte_of_a_wal_database(make_db, config, tmp_path: Path) -> None:
    db = make_db(5000)
    apply_migrations(config(db))
    # An idle connection keeps committed rows in the -wal, so the -wal has content to compare.
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("PRAGMA wal_autocheckpoint = 0")
    app.execute("INSERT INTO companies (id, name) VALUES (999, 'in the wal')")
    wal = db.with_name(db.name + "-wal")
    files = sorted(p.name for p in db.parent.iterdir())
    hashes = sha(db), sha(wal)
    assert wal.stat().st_size > 0

    report = run(db, tmp_path, quick_check=True)

    assert (sha(db), sha(wal)) == hashes
    assert sorted(p.name for p in db.parent.iterdir()) == files
    assert report.quick_check == "ok" and len(report.queries) == 4
    assert report.wal_bytes == wal.stat().st_size
    app.close()


def test_measure_changes_no_byte_of_a_rollback_journal_database(make_db, config, tmp_path: Path) -> None:
    db = make_db(2000, wal=False)
    apply_migrations(config(db))
    files = sorted(p.name for p in db.parent.iterdir())
    digest = sha(db)
    report = run(db, tmp_path, quick_check=True)
    assert sha(db) == digest
    assert sorted(p.name for p in db.parent.iterdir()) == files  # no -journal, -wal or -shm left
    assert report.wal_bytes == 0 and len(report.queries) == 4


def test_a_writer_commits_while_measure_runs(make_db, config, tmp_path: Path) -> None:
    db = make_db(50_000)
    apply_migrations(config(db))
    reports: list[HealthReport] = []
    measure_all = lambda: reports.append(run(db, tmp_path, query_budget_s=0.3, quick_check=True))  # noqa: E731
    worker = threading.Thread(target=measure_all)
    writer = sqlite3.connect(db, isolation_level=None, timeout=0)
    writer.execute("PRAGMA busy_timeout = 0")  # any lock measure() took would fail a commit at once
    commits, complete, next_id = 0, 0, 1_000_000
    worker.start()
    started = time.monotonic()
    while worker.is_alive():
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO companies (id, name) VALUES (?, 'new')", (next_id,))
        writer.execute("COMMIT")
        commits, next_id = commits + 1, next_id + 1
        # A checkpoint copies the WAL up to the oldest reader's snapshot: a read transaction held
        # across the run would leave every later checkpoint incomplete.
        _, log, done = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        complete += time.monotonic() - started > 0.2 and log == done
    worker.join()
    writer.close()
    assert reports and reports[0].seconds > 0.3  # at least one query ran for its whole budget
    # Counts, not rates: every commit above succeeded with busy_timeout 0 (a lock measure() held
    # would have raised), and checkpoints completed while it ran. How many depends on the machine
    # (112 commits, 4 complete under a load of 6 here), so neither is a pass/fail bound.
    assert commits > 0 and complete >= 1


# ---------------------------------------------------------------------------------------------
# Declared queries


def _run_report(report_dir: Path, db: Path, started: datetime, status: str, p95: float) -> None:
    """A RunReport JSON as flows/migrate.py writes it, reduced to what health reads."""
    report_dir.mkdir(parents=True, exist_ok=True)
    query = {"name": "billing_rate_lookup", "after": {"runs": 7, "p50_ms": p95 / 2, "p95_ms": p95}}
    data = {
        "database": str(db),
        "started_at": started.isoformat(timespec="seconds"),
        "status": status,
        "applied": ["001_add_composite_indexes"] if status == "completed" else [],
        "queries": [query],
    }
    name = f"{db_key(db)}-{started.strftime('%Y%m%d_%H%M%S_%f')}.json"
    (report_dir / name).write_text(json.dumps(data), "utf-8")


def test_declared_queries_are_timed_with_their_baseline_and_runs_counted(make_db, config, tmp_path) -> None:
    db = make_db()
    apply_migrations(config(db))
    reports = tmp_path / "reports"
    _run_report(reports, db, NOW - timedelta(days=3), "completed", 1.0)
    _run_report(reports, db, NOW - timedelta(days=2), "completed", 2.0)  # the latest completed
    _run_report(reports, db, NOW - timedelta(days=1), "failed", 9.0)
    _run_report(reports, db, NOW - timedelta(days=10), "failed", 9.0)  # outside the 7 days
    (reports / f"{db_key(db)}-health.json").write_text("{}", "utf-8")  # not a run report

    report = run(db, tmp_path, now=NOW)

    assert [q.name for q in report.queries] == [
        "user_worklogs_range",
        "sync_instance_range",
        "billing_rate_lookup",
        "factorial_leaves_by_status",
    ]
    for q in report.queries:
        assert q.runs >= 5 and q.migration == "001_add_composite_indexes"
        assert q.p50_ms <= q.p95_ms <= q.p99_ms <= q.max_ms  # type: ignore[operator]
        assert q.plan_problem is None and q.expect_index in q.plan[0]
    baselines = {q.name: q.baseline_p95_ms for q in report.queries}
    assert baselines["billing_rate_lookup"] == 2.0 and baselines["user_worklogs_range"] is None
    assert {f.severity for m in ("query_p95_ms", "query_max_ms", "query_plan") for f in find(report, m)} == {
        "ok"
    }
    assert (report.failed_runs, report.total_runs) == (1, 3)
    [rate] = find(report, "error_rate")
    assert (rate.value, rate.severity, rate.action) == (33.33, "warning", "investigate")


def test_a_database_without_tracking_has_no_query_findings(make_db, tmp_path: Path) -> None:
    report = run(make_db(), tmp_path)
    assert report.queries == []
    assert [f for f in report.findings if f.metric.startswith("query")] == []


def test_a_dropped_index_is_a_plan_problem(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    apply_migrations(config(db))
    write(db, "DROP INDEX idx_billing_rates_lookup")
    [f] = find(run(db, tmp_path), "query_plan", "billing_rate_lookup")
    assert (f.severity, f.action, f.threshold) == ("warning", "investigate", "idx_billing_rates_lookup")
    assert f.message.startswith("billing_rate_lookup: does not use idx_billing_rates_lookup: SEARCH")


def test_plan_problems() -> None:
    assert plan_problem(["SCAN worklogs"], "i").startswith("full scan where i was expected")  # type: ignore[union-attr]
    assert plan_problem(["SEARCH t USING INDEX i (a=?)", "USE TEMP B-TREE FOR ORDER BY"], "i").startswith(
        "sorts in a temporary b-tree"
    )  # type: ignore[union-attr]
    assert plan_problem(["SEARCH t USING AUTOMATIC COVERING INDEX (a=?)"], "i").startswith(  # type: ignore[union-attr]
        "builds an automatic index"
    )
    assert (
        plan_problem(["SEARCH t USING INDEX i_2 (a=?)"], "i")
        == "does not use i: SEARCH t USING INDEX i_2 (a=?)"
    )
    assert plan_problem(["SEARCH t USING INDEX i (a=?)"], "i") is None
    assert plan_problem(["SCAN t"], None) is None


def test_a_query_above_the_critical_time_runs_once(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    apply_migrations(config(db))
    tight = Thresholds(query_slow_p95_ms=0.00001, query_critical_ms=0.00002)
    report = run(db, tmp_path, tight)
    assert {q.runs for q in report.queries} == {1}
    assert {f.severity for f in find(report, "query_max_ms")} == {"critical"}
    assert {(f.severity, f.action) for f in find(report, "query_p95_ms")} == {("warning", "investigate")}


def test_a_failing_query_is_a_critical_finding(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    apply_migrations(config(db))
    write(db, "ALTER TABLE factorial_leaves RENAME TO leaves")
    [f] = find(run(db, tmp_path), "query_plan", "factorial_leaves_by_status")
    assert (f.severity, f.value) == ("critical", "no such table: factorial_leaves")


# ---------------------------------------------------------------------------------------------
# Statistics


def test_stats_drift_after_a_bulk_insert_without_analyze(make_db, tmp_path: Path) -> None:
    db = make_db()
    write(db, "INSERT INTO worklogs SELECT id + 100000, company_id, team_id, jira_instance, author_email, "
          "issue_key, started, time_spent_seconds, comment FROM worklogs")  # fmt: skip
    report = run(db, tmp_path)
    drifted = [(f.object, f.value, f.action) for f in find(report, "stats_drift") if f.severity != "ok"]
    assert drifted == [("worklogs", 0.5, "analyze")]
    assert next(s for s in report.stats if s.table == "worklogs").stat_rows == 2000
    write(db, "ANALYZE worklogs")
    assert {f.severity for f in find(run(db, tmp_path), "stats_drift")} == {"ok"}


def test_a_new_index_without_a_stat_row_is_missing(make_db, tmp_path: Path) -> None:
    db = make_db()
    write(db, "CREATE INDEX idx_invoices_period ON invoices(period)")
    report = run(db, tmp_path)
    missing = [(f.object, f.severity, f.action) for f in find(report, "stats_missing") if f.severity != "ok"]
    assert missing == [("idx_invoices_period", "warning", "analyze")]
    assert find(report, "stats_missing", "idx_worklogs_company")[0].severity == "ok"


def test_a_never_analyzed_database_misses_every_index(tmp_path: Path) -> None:
    db = tmp_path / "plain.db"
    write(
        db,
        "CREATE TABLE t (a INTEGER, b TEXT UNIQUE)",
        "CREATE INDEX t_a ON t(a)",
        "CREATE TABLE empty (a)",
        "CREATE INDEX empty_a ON empty(a)",
        "INSERT INTO t VALUES (1, 'x'), (2, 'y')",
    )
    report = run(db, tmp_path)
    assert report.stat1 is False
    missing = {f.object for f in find(report, "stats_missing") if f.severity == "warning"}
    assert missing == {"t_a", "sqlite_autoindex_t_1"}  # an empty table has nothing to analyze
    assert find(report, "stats_drift") == []


# ---------------------------------------------------------------------------------------------
# History


def test_growth_per_day_from_two_samples(tmp_path: Path) -> None:
    history = History(tmp_path / "h.db")
    assert history.growth_per_day("k", NOW) is None
    history.add_samples("k", NOW - timedelta(days=2), [("db_bytes", "k", 1_000_000)])
    assert history.growth_per_day("k", NOW) is None  # one sample
    history.add_samples("k", NOW - timedelta(days=1), [("db_bytes", "k", 1_500_000)])
    assert history.growth_per_day("k", NOW) == pytest.approx(500_000)
    assert history.growth_per_day("k", NOW, days=1.5) is None  # only the later sample is in range
    history.add_samples("other", NOW - timedelta(minutes=50), [("db_bytes", "other", 1_000_000)])
    assert history.growth_per_day("other", NOW, latest_bytes=2_000_000) is None  # 50 minutes apart
    assert history.growth_per_day("other", NOW + timedelta(minutes=10), latest_bytes=2_000_000) == 24e6


def test_days_left_at_the_measured_growth(make_db, tmp_path: Path) -> None:
    db = make_db()
    history = History(tmp_path / "h.db")
    key, size = db_key(db), db.stat().st_size
    history.add_samples(key, NOW - timedelta(days=1), [("db_bytes", key, size - 100_000)])
    report = run(db, tmp_path, history=history, now=NOW)  # the current size is the second sample
    assert report.growth_bytes_per_day == pytest.approx(100_000)
    assert report.days_left == pytest.approx((2 * 1024**3 - size) / 100_000)
    assert find(report, "days_left")[0].severity == "ok"
    short = run(db, tmp_path, Thresholds(days_left_warning=1e6), history=history, now=NOW)
    assert [(f.severity, f.action) for f in find(short, "days_left")] == [("warning", "archive")]


def test_days_left_is_unavailable_without_history(make_db, tmp_path: Path) -> None:
    [f] = find(run(make_db(), tmp_path), "days_left")
    assert f.severity == "unavailable" and "history" in f.message


def test_record_keeps_every_figure_as_a_series(make_db, tmp_path: Path) -> None:
    history = History(tmp_path / "h.db")
    report = run(make_db(), tmp_path, now=NOW, quick_check=True)
    history.record(report)
    assert history.series(report.key, "quick_check", report.key, NOW) == [(NOW, 1.0)]  # when one last ran
    assert history.series(report.key, "db_bytes", report.key, NOW - timedelta(hours=1)) == [
        (NOW, float(report.db_bytes))
    ]
    rows = history.series(report.key, "table_rows", "worklogs", NOW - timedelta(hours=1))
    assert rows == [(NOW, 2000.0)]
    assert history.series(report.key, "db_bytes", report.key, NOW + timedelta(seconds=1)) == []


def _f(severity: str, metric: str = "freelist_pct") -> Finding:
    return Finding(metric, "db-1", 1.0, 1.0, severity, None, "")  # type: ignore[arg-type]


def test_transitions_only_on_a_change_of_state(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db")
    assert h.transitions("k", [_f("ok")]) == []
    assert [e for _, e in h.transitions("k", [_f("warning")])] == ["breached"]
    assert h.transitions("k", [_f("warning")]) == []
    assert h.transitions("k", [_f("unavailable")]) == []  # nothing measured: the breach stays open
    assert [e for _, e in h.transitions("k", [_f("critical")])] == ["escalated"]
    assert h.transitions("k", [_f("warning")]) == []  # still a breach
    assert [e for _, e in h.transitions("k", [_f("ok")])] == ["recovered"]
    assert [e for _, e in h.transitions("k", [_f("critical", "db_bytes")])] == ["breached"]
    assert h.transitions("other", [_f("ok")]) == []  # per database


def test_claim_once_and_run_durations(tmp_path: Path) -> None:
    assert history_path(tmp_path / "reports") == tmp_path / "reports" / "health-history.db"
    h = History(tmp_path / "h.db")
    assert h.claim("k:reindex:idx:2026-W48") is True
    assert h.claim("k:reindex:idx:2026-W48") is False
    assert History(tmp_path / "h.db").claim("k:reindex:idx:2026-W48") is False  # survives a new instance
    h.record_run("reindex", "k", 1.5, True, NOW - timedelta(days=2))
    h.record_run("reindex", "k", 9.0, False, NOW - timedelta(days=1))
    h.record_run("reindex", "k", 2.5, True, NOW)
    h.record_run("vacuum", "k", 30.0, True, NOW)
    assert h.last_run_seconds("reindex", "k") == [1.5, 2.5]
    assert h.last_run_seconds("reindex", "other") == []


# ---------------------------------------------------------------------------------------------
# Output


def test_json_markdown_and_table_shapes(make_db, tmp_path: Path) -> None:
    db = make_db()
    report = run(db, tmp_path, now=NOW)
    data = json.loads(json.dumps(report.as_dict()))
    assert data["key"] == db_key(db) and data["measured_at"] == "2026-11-28T12:00:00+00:00"
    assert data["breaches"] == 0 and len(data["findings"]) == len(report.findings)
    for f in data["findings"]:
        assert {"metric", "object", "value", "threshold", "severity", "action", "message"} <= set(f)
    text = render_markdown(report, trend_png="out/trend.png")
    assert (
        "- **Trend**: [trend.png](out/trend.png)\n" in text and "| idx_worklogs_company | worklogs |" in text
    )
    assert "- **Trend**: [7d.png](a/7d.png), [30d.png](a/30d.png)\n" in render_markdown(
        report, ["a/7d.png", "a/30d.png"]
    )
    rows = table_rows(report)
    assert len(rows) == len(report.findings) and rows[0]["severity"] == "unavailable"  # days_left first


def test_a_missing_database_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        run(tmp_path / "nope.db", tmp_path)


def test_a_path_with_uri_characters_is_measured(make_db, tmp_path: Path) -> None:
    odd = tmp_path / "a?b#c%d"
    odd.mkdir()
    db = make_db().rename(odd / "w.db")
    assert run(db, tmp_path).page_count > 0  # not opened as "file:.../a" with a query string


def test_without_a_migrations_directory_everything_but_the_queries_is_measured(
    make_db, tmp_path: Path
) -> None:
    db = make_db()
    report = measure(db, migrations_dir=tmp_path / "none", report_dir=tmp_path / "reports", thresholds=SMALL)
    [note] = find(report, "declared_queries")
    assert (note.severity, note.value, note.action) == ("unavailable", None, None)
    assert note.message == (
        f"no migrations directory {tmp_path / 'none'}: the declared queries were not timed; "
        "pass --migrations DIR"
    )
    assert report.queries == [] and find(report, "freelist_pct")
