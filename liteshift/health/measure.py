"""Measuring a database's health: sizes, index bloat, declared queries, statistics, checks and failed runs.

Everything is measured on the live file, never estimated, through a read-only connection
(`mode=ro`): no write lock, no byte of the database changed, and each measurement is its own
short read, so no read transaction spans the run. In WAL mode a reader never blocks a writer;
in rollback-journal mode a writer's COMMIT waits (its busy timeout) for the read under way.
Plain Python, no Prefect: the `database-health` flow only calls measure() and acts on findings.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from liteshift.core.db import (
    CORRUPT_HINT,
    check_is_sqlite_file,
    connect,
    is_locked_error,
    pragma_check,
    table_exists,
    user_tables,
)
from liteshift.core.errors import CheckFailed
from liteshift.core.migrations import Migration, Query, load_migrations
from liteshift.core.names import db_key
from liteshift.core.plans import explain
from liteshift.core.sql import quote_ident
from liteshift.core.tracking import read_tracking

if TYPE_CHECKING:
    from liteshift.health.history import History
from liteshift.health.judge import judge
from liteshift.health.model import Finding, HealthReport, IndexHealth, QueryHealth, StatsHealth
from liteshift.health.thresholds import RUN_WINDOW, Thresholds

MIN_QUERY_RUNS = 5


MAX_QUERY_RUNS = 5000  # enough for a p99; a 5 µs query would otherwise fill the budget with 200k samples


STAMP_RE = re.compile(r"^\d{8}_\d{6}_\d{6}$")  # RunReport.write: <db key>-<stamp>.json


SCAN_RE = re.compile(r"^SCAN (?!CONSTANT ROW)")


T = TypeVar("T")


def _one(con: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row; the statement runs to its end, so its read ends too."""
    rows = con.execute(sql, params).fetchall()
    return rows[0][0] if rows else None


def _file_bytes(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _sizes(report: HealthReport, database: Path, con: sqlite3.Connection) -> None:
    """File sizes from the file system; pages and free pages from SQLite."""
    report.db_bytes = _file_bytes(database)
    report.wal_bytes = _file_bytes(database.with_name(database.name + "-wal"))
    report.shm_bytes = _file_bytes(database.with_name(database.name + "-shm"))
    report.page_size = int(_one(con, "PRAGMA page_size"))
    report.page_count = int(_one(con, "PRAGMA page_count"))
    report.freelist_count = int(_one(con, "PRAGMA freelist_count"))


def dbstat_available(con: sqlite3.Connection) -> bool:
    """True when this SQLite build has the dbstat virtual table."""
    sql = "SELECT 1 FROM pragma_compile_options WHERE compile_options = 'ENABLE_DBSTAT_VTAB'"
    return _one(con, sql) is not None


def _user_indexes(con: sqlite3.Connection) -> list[tuple[str, str]]:
    """(index, table) of every index on a user table, automatic ones included."""
    rows = con.execute(
        "SELECT name, tbl_name FROM sqlite_schema WHERE type = 'index' ORDER BY tbl_name, name"
    ).fetchall()
    tables = set(user_tables(con))
    return [(n, t) for n, t in rows if t in tables]


def _indexes(report: HealthReport, con: sqlite3.Connection) -> None:
    """Bytes and unused share per index, one dbstat read per index (each read stays short)."""
    names = _user_indexes(con)
    report.dbstat = dbstat_available(con)
    if report.dbstat:
        try:
            report.indexes = [_index_bytes(con, name, table) for name, table in names]
            return
        except sqlite3.OperationalError as exc:
            if "no such table: dbstat" not in str(exc):
                raise
            report.dbstat = False
    report.indexes = [IndexHealth(name, table, None, None) for name, table in names]


def _index_bytes(con: sqlite3.Connection, name: str, table: str) -> IndexHealth:
    row = con.execute(
        "SELECT sum(pgsize), sum(unused) FROM dbstat WHERE name = ? AND aggregate = TRUE", (name,)
    ).fetchall()[0]
    size, unused = int(row[0] or 0), int(row[1] or 0)
    return IndexHealth(name, table, size, round(100.0 * unused / size, 3) if size else 0.0)


def _first_int(stat: str | None) -> int | None:
    head = (stat or "").split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def _stats(report: HealthReport, con: sqlite3.Connection) -> None:
    """Per table: count(*) against sqlite_stat1's estimate, and its indexes without a stat row."""
    report.stat1 = table_exists(con, "sqlite_stat1")
    stat_rows = con.execute("SELECT tbl, idx, stat FROM sqlite_stat1").fetchall() if report.stat1 else []
    for table in user_tables(con):
        count = int(_one(con, f"SELECT count(*) FROM {quote_ident(table)}"))
        indexes = con.execute(f"PRAGMA index_list({quote_ident(table)})").fetchall()
        partial = {str(r[1]).lower() for r in indexes if r[4]}
        mine = [(idx, stat) for tbl, idx, stat in stat_rows if str(tbl).lower() == table.lower()]
        analyzed = {str(idx).lower() for idx, _ in mine if idx}
        # ANALYZE writes no row for an empty table's indexes: nothing is missing there.
        missing = [str(r[1]) for r in indexes if count and str(r[1]).lower() not in analyzed]
        # A partial index counts only its own rows: its estimate is not the table's.
        estimates = [_first_int(stat) for idx, stat in mine if not idx or str(idx).lower() not in partial]
        estimate = next((e for e in estimates if e is not None), None)
        report.stats.append(StatsHealth(table, count, estimate, missing))


def _percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of sorted samples."""
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _run_ms(con: sqlite3.Connection, sql: str) -> float:
    start = time.perf_counter()
    con.execute(sql).fetchall()  # fetched to the end: the read is over when the timer stops
    return (time.perf_counter() - start) * 1000


def time_runs(con: sqlite3.Connection, sql: str, budget_s: float, critical_ms: float) -> list[float]:
    """Milliseconds of single executions: at least MIN_QUERY_RUNS, more while budget_s lasts.

    The first (cold) run warms the cache and is not kept, unless it is already above
    critical_ms: then it is the only run, since repeating a query that slow only loads the live
    database, and the verdict is already critical.
    """
    text = sql.strip().rstrip(";")
    first = _run_ms(con, text)
    if first > critical_ms:
        return [first]
    samples: list[float] = []
    end = time.perf_counter() + budget_s
    while len(samples) < MIN_QUERY_RUNS or (time.perf_counter() < end and len(samples) < MAX_QUERY_RUNS):
        samples.append(_run_ms(con, text))
    return samples


def plan_problem(detail: list[str], expect_index: str | None) -> str | None:
    """Why a plan does not serve a query meant to use expect_index, or None."""
    if not expect_index:
        return None
    text = "; ".join(detail)
    if any(SCAN_RE.match(d) for d in detail):
        return f"full scan where {expect_index} was expected: {text}"
    if "USE TEMP B-TREE" in text:
        return f"sorts in a temporary b-tree where {expect_index} was expected: {text}"
    if "AUTOMATIC" in text:
        return f"builds an automatic index where {expect_index} was expected: {text}"
    if not re.search(rf"\bINDEX {re.escape(expect_index)}\b", text):
        return f"does not use {expect_index}: {text}"
    return None


def _check_query(
    con: sqlite3.Connection, label: str, q: Query, th: Thresholds, budget_s: float
) -> QueryHealth:
    """Plan and timings of one declared query; a query that fails is reported, not raised."""
    result = QueryHealth(q.name, label, q.expect_index)
    try:
        result.plan = explain(con, q.sql).detail
        samples = sorted(time_runs(con, q.sql, budget_s, th.query_critical_ms))
    except sqlite3.OperationalError as exc:
        if is_locked_error(exc):
            raise
        result.error = str(exc)
        return result
    result.runs = len(samples)
    result.p50_ms, result.p95_ms = _percentile(samples, 50), _percentile(samples, 95)
    result.p99_ms, result.max_ms = _percentile(samples, 99), samples[-1]
    result.plan_problem = plan_problem(result.plan, q.expect_index)
    return result


def _applied_migrations(con: sqlite3.Connection, migrations: list[Migration]) -> list[Migration]:
    """The migrations the tracking table records as applied (none without the table)."""
    applied = read_tracking(con)
    return [m for m in migrations if m.version in applied]


def _queries(
    report: HealthReport,
    con: sqlite3.Connection,
    migrations: list[Migration],
    baselines: dict[tuple[str, str], float],
    th: Thresholds,
    budget_s: float,
) -> None:
    for m in _applied_migrations(con, migrations):
        for q in m.queries:
            result = _check_query(con, m.label, q, th, budget_s)
            result.baseline_p95_ms = baselines.get((m.label, q.name))
            report.queries.append(result)


RunFile = tuple[datetime, dict[str, Any]]  # (started_at, the RunReport JSON)


def _run_reports(report_dir: Path, key: str) -> list[RunFile]:
    """This database's run reports, oldest first; unreadable files are skipped."""
    found = []
    for path in report_dir.glob(f"{key}-*.json") if report_dir.is_dir() else []:
        if not STAMP_RE.match(path.stem[len(key) + 1 :]):
            continue  # another database whose key starts like this one, or not a run report
        try:
            data = json.loads(path.read_text("utf-8"))
            found.append((datetime.fromisoformat(data["started_at"]), data))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a report being written, or not a run report
    return sorted(found, key=lambda run: run[0])


def _baselines(runs: list[RunFile]) -> dict[tuple[str, str], float]:
    """(migration label, query) -> "after" p95 of the latest completed run that applied it."""
    result: dict[tuple[str, str], float] = {}
    for _, run in runs:
        if run.get("status") != "completed":
            continue
        for label in run.get("applied") or []:
            for q in run.get("queries") or []:
                after = q.get("after") or {}
                if after.get("p95_ms") is not None:
                    result[(label, q["name"])] = float(after["p95_ms"])
    return result


def _run_counts(runs: list[RunFile], now: datetime) -> tuple[int, int]:
    """(failed, total) liteshift runs that started within RUN_WINDOW before now."""
    recent = [run for started, run in runs if now - RUN_WINDOW <= started <= now]
    return sum(1 for run in recent if run.get("status") == "failed"), len(recent)


def _timed(report: HealthReport, phase: str, step: Callable[[], T]) -> T:
    start = time.perf_counter()
    try:
        return step()
    finally:
        report.timings[phase] = round(time.perf_counter() - start, 4)


def _utc(moment: datetime | None) -> datetime:
    """The moment in UTC (a naive one is taken as UTC), or now."""
    if moment is None:
        return datetime.now(UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _growth(report: HealthReport, history: History | None, now: datetime, th: Thresholds) -> None:
    if history is None:
        return
    report.growth_bytes_per_day = history.growth_per_day(report.key, now, latest_bytes=report.db_bytes)
    rate = report.growth_bytes_per_day
    if rate is not None and rate > 0:
        report.days_left = max(0.0, (th.size_warning_bytes - report.db_bytes) / rate)


def measure(
    database: Path,
    *,
    migrations_dir: Path,
    report_dir: Path,
    thresholds: Thresholds,
    history: History | None = None,
    quick_check: bool = False,
    query_budget_s: float = 1.0,
    now: datetime | None = None,
    busy_timeout_ms: int = 5000,
) -> HealthReport:
    """Measure a live database read-only and judge it against the thresholds (writes nothing)."""
    check_is_sqlite_file(database)
    # Without a migrations directory (a database liteshift never migrated, or health run from
    # elsewhere) everything but the declared queries is measured, and the report says so.
    migrations = load_migrations(migrations_dir) if migrations_dir.is_dir() else None
    now = _utc(now)
    start = time.perf_counter()
    report = HealthReport(str(database), db_key(database), now.isoformat(timespec="seconds"))
    runs = _timed(report, "run_reports", lambda: _run_reports(report_dir, report.key))
    report.failed_runs, report.total_runs = _run_counts(runs, now)
    try:
        con = connect(database, busy_timeout_ms, readonly=True)  # cannot write a byte
        try:
            _measure_database(
                report, con, database, migrations or [], _baselines(runs), thresholds, query_budget_s
            )
            if quick_check:
                problems = _timed(report, "quick_check", lambda: pragma_check(con, "quick_check"))
                report.quick_check = "; ".join(problems[:5]) or "ok"
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        if is_locked_error(exc):
            raise
        raise CheckFailed(f"Database {database} could not be measured", str(exc), CORRUPT_HINT) from exc
    _growth(report, history, now, thresholds)
    report.findings = judge(report, thresholds)
    if migrations is None:
        report.findings.append(
            Finding(
                "declared_queries",
                report.key,
                None,
                None,
                "unavailable",
                None,
                f"no migrations directory {migrations_dir}: the declared queries were not timed; "
                "pass --migrations DIR",
            )
        )
    report.seconds = round(time.perf_counter() - start, 4)
    return report


def _measure_database(
    report: HealthReport,
    con: sqlite3.Connection,
    database: Path,
    migrations: list[Migration],
    baselines: dict[tuple[str, str], float],
    th: Thresholds,
    budget_s: float,
) -> None:
    """The measurements over the database, each in its own short read."""
    _timed(report, "sizes", lambda: _sizes(report, database, con))
    _timed(report, "indexes", lambda: _indexes(report, con))
    _timed(report, "stats", lambda: _stats(report, con))
    _timed(report, "queries", lambda: _queries(report, con, migrations, baselines, th, budget_s))
