"""Database health: sizes, index bloat, declared queries, statistics, checks and failed runs.

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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from liteshift.db import (
    CORRUPT_HINT,
    check_is_sqlite_file,
    connect,
    is_locked_error,
    pragma_check,
    table_exists,
    user_tables,
)
from liteshift.errors import BadInput, CheckFailed
from liteshift.migrations import Migration, Query, load_migrations
from liteshift.report import db_key
from liteshift.sql import quote_ident
from liteshift.tasks.query_plan import explain
from liteshift.tracking import read_tracking

if TYPE_CHECKING:
    from liteshift.history import History, Sample

Severity = Literal["ok", "warning", "critical", "unavailable"]
Action = Literal["analyze", "reindex", "vacuum", "archive", "investigate"]
MiB = 1024**2
GiB = 1024**3
RUN_WINDOW = timedelta(days=7)  # the report's monitoring period: failed runs are counted over it
MIN_QUERY_RUNS = 5
MAX_QUERY_RUNS = 5000  # enough for a p99; a 5 µs query would otherwise fill the budget with 200k samples
STAMP_RE = re.compile(r"^\d{8}_\d{6}_\d{6}$")  # RunReport.write: <db key>-<stamp>.json
SCAN_RE = re.compile(r"^SCAN (?!CONSTANT ROW)")
T = TypeVar("T")


class Thresholds(BaseModel):
    """When a measured figure is a warning or critical; defaults are the phase-1 report's values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query_slow_p95_ms: float = Field(
        500,
        gt=0,
        description="Warning when a declared query's p95 is above it (the report's slow-query log).",
    )
    query_critical_ms: float = Field(
        5000, gt=0, description="Critical when any timed run of a declared query is above it ('> 5 s')."
    )
    size_warning_bytes: int = Field(
        2 * GiB, gt=0, description="Warning when the database file is larger ('> 2 GB: plan archiving')."
    )
    size_critical_bytes: int = Field(
        4 * GiB,
        gt=0,
        description="Critical above it: VACUUM then needs up to twice this in free disk, and every "
        "rebuild, backup and REINDEX lasts twice as long as at the warning size.",
    )
    index_unused_warning_pct: float = Field(
        15, ge=0, le=100, description="Warning when this share of an index's page bytes is unused (REINDEX)."
    )
    index_unused_critical_pct: float = Field(
        50,
        ge=0,
        le=100,
        description="Critical above it: half the index's pages are empty space, every lookup reads "
        "about twice the pages a rebuilt index needs.",
    )
    index_min_bytes: int = Field(
        MiB,
        ge=0,
        description="Indexes smaller than this are not judged: they waste under 1 MiB whatever their "
        "share, and in an index of a few pages one half-empty page moves the share by tens of percent.",
    )
    freelist_warning_pct: float = Field(
        20, ge=0, le=100, description="Warning when this share of the file's pages is free (VACUUM)."
    )
    freelist_critical_pct: float = Field(
        50,
        ge=0,
        le=100,
        description="Critical when more than this share of the file's pages is free (VACUUM).",
    )
    stats_drift_ratio: float = Field(
        0.2,
        gt=0,
        description="ANALYZE a table when |count(*) - sqlite_stat1 estimate| / count(*) is above it.",
    )
    days_left_warning: float = Field(
        30, gt=0, description="Warning when the measured growth reaches size_warning_bytes within these days."
    )
    error_rate_warning_pct: float = Field(
        10, ge=0, le=100, description="Warning when this share of liteshift runs failed over the last 7 days."
    )
    error_rate_critical_pct: float = Field(
        50,
        ge=0,
        le=100,
        description="Critical when this share of liteshift runs failed over the last 7 days.",
    )

    @model_validator(mode="after")
    def _warning_below_critical(self) -> Thresholds:
        for warning, critical in PAIRS:
            low, high = getattr(self, warning), getattr(self, critical)
            if low >= high:
                raise ValueError(f"{warning} ({low}) must be below {critical} ({high})")
        return self

    @classmethod
    def from_parameters(cls, params: dict[str, Any]) -> Thresholds:
        """Validate flat parameters (None: the default) or raise BadInput naming the field(s)."""
        try:
            return cls(**{k: v for k, v in params.items() if v is not None})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            if not where:  # the model's own check: a warning not below its critical
                hint = "lower the warning threshold or raise the critical one; a warning must be below it"
            else:
                hint = "see 'liteshift health --help' for the thresholds and their accepted values"
            raise BadInput(
                f"Invalid parameter {where}" if where else "Invalid thresholds",
                first["msg"].removeprefix("Value error, "),
                hint,
            ) from None


PAIRS = (
    ("query_slow_p95_ms", "query_critical_ms"),
    ("size_warning_bytes", "size_critical_bytes"),
    ("index_unused_warning_pct", "index_unused_critical_pct"),
    ("freelist_warning_pct", "freelist_critical_pct"),
    ("error_rate_warning_pct", "error_rate_critical_pct"),
)


@dataclass
class Finding:
    """One judged figure: what, of which object, its value against its threshold, and what to do."""

    metric: str
    object: str
    value: float | str | None
    threshold: float | str | None
    severity: Severity
    action: Action | None
    message: str


@dataclass
class IndexHealth:
    """An index's size and unused share from dbstat (None: dbstat is not available)."""

    name: str
    table: str
    bytes: int | None
    unused_pct: float | None


@dataclass
class QueryHealth:
    """A declared query of an applied migration: its timings and plan now, and its baseline."""

    name: str
    migration: str
    expect_index: str | None
    runs: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    plan: list[str] = field(default_factory=list)
    plan_problem: str | None = None
    baseline_p95_ms: float | None = None  # "after" p95 of the migration's own latest completed run
    error: str | None = None  # the query failed (a table or column gone)


@dataclass
class StatsHealth:
    """A table's row count against the planner's estimate, and its indexes without statistics."""

    table: str
    rows: int
    stat_rows: int | None
    missing_indexes: list[str] = field(default_factory=list)


@dataclass
class HealthReport:
    """Everything one health measurement found, with the findings judged from it."""

    database: str
    key: str
    measured_at: str
    seconds: float = 0.0
    db_bytes: int = 0
    wal_bytes: int = 0
    shm_bytes: int = 0
    page_size: int = 0
    page_count: int = 0
    freelist_count: int = 0
    growth_bytes_per_day: float | None = None
    days_left: float | None = None
    indexes: list[IndexHealth] = field(default_factory=list)
    dbstat: bool = True  # False: this SQLite build has no dbstat, index bloat is unavailable
    queries: list[QueryHealth] = field(default_factory=list)
    stats: list[StatsHealth] = field(default_factory=list)
    stat1: bool = True  # False: the database has no sqlite_stat1 table at all
    quick_check: str | None = None
    failed_runs: int = 0
    total_runs: int = 0
    findings: list[Finding] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per measurement phase

    @property
    def freelist_pct(self) -> float:
        return 100.0 * self.freelist_count / self.page_count if self.page_count else 0.0

    @property
    def error_rate_pct(self) -> float | None:
        return 100.0 * self.failed_runs / self.total_runs if self.total_runs else None

    def breaches(self) -> list[Finding]:
        """Findings at warning or critical."""
        return [f for f in self.findings if f.severity in ("warning", "critical")]

    def as_dict(self) -> dict[str, Any]:
        """The JSON object `liteshift health --json` prints."""
        data = asdict(self)
        data["freelist_pct"] = round(self.freelist_pct, 3)
        data["error_rate_pct"] = self.error_rate_pct
        data["breaches"] = len(self.breaches())
        return data

    def samples(self) -> list[Sample]:
        """Every numeric figure as (metric, object, value), for the history."""
        k = self.key
        rows: list[tuple[str, str, float | int | None]] = [
            ("db_bytes", k, self.db_bytes),
            ("wal_bytes", k, self.wal_bytes),
            ("shm_bytes", k, self.shm_bytes),
            ("page_count", k, self.page_count),
            ("freelist_count", k, self.freelist_count),
            ("freelist_pct", k, self.freelist_pct),
            ("growth_bytes_per_day", k, self.growth_bytes_per_day),
            ("days_left", k, self.days_left),
            ("error_rate_pct", k, self.error_rate_pct),
            ("measure_seconds", k, self.seconds),
        ]
        for i in self.indexes:
            rows += [("index_bytes", i.name, i.bytes), ("index_unused_pct", i.name, i.unused_pct)]
        for q in self.queries:
            rows += [(f"query_{p}_ms", q.name, getattr(q, f"{p}_ms")) for p in ("p50", "p95", "p99", "max")]
        for s in self.stats:
            rows.append(("table_rows", s.table, s.rows))
        if self.quick_check is not None:  # 1 ok, 0 damaged; its presence says when one last ran
            rows.append(("quick_check", k, float(self.quick_check == "ok")))
        return [(m, o, float(v)) for m, o, v in rows if v is not None]


# ---------------------------------------------------------------------------------------------
# Reading the database


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


# ---------------------------------------------------------------------------------------------
# Declared queries


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


# ---------------------------------------------------------------------------------------------
# liteshift's own run reports: baselines and failed runs


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


# ---------------------------------------------------------------------------------------------
# Findings

BREACH = ("warning", "critical")


def _grade(value: float, warning: float, critical: float) -> Severity:
    if value > critical:
        return "critical"
    return "warning" if value > warning else "ok"


def _judged(
    metric: str,
    obj: str,
    value: float | str | None,
    threshold: float | str | None,
    severity: Severity,
    action: Action,
    what: str,
    fix: str,
) -> Finding:
    """A finding whose action and fix are given only when it is a breach."""
    breach = severity in BREACH
    return Finding(metric, obj, value, threshold, severity, action if breach else None, what + fix * breach)


def _above(
    metric: str, obj: str, value: float, warning: float, critical: float, action: Action, what: str, fix: str
) -> Finding:
    """Judge a figure that is bad when high, against the threshold it crossed (or the warning)."""
    severity = _grade(value, warning, critical)
    limit = critical if severity == "critical" else warning
    return _judged(metric, obj, value, limit, severity, action, what, fix)


def _size_findings(r: HealthReport, th: Thresholds) -> list[Finding]:
    size, free = r.db_bytes, round(r.freelist_pct, 3)
    return [
        _above(
            "db_bytes",
            r.key,
            size,
            th.size_warning_bytes,
            th.size_critical_bytes,
            "archive",
            f"database file {size / 1e6:.1f} MB",
            ": plan archiving old rows",
        ),
        _above(
            "freelist_pct",
            r.key,
            free,
            th.freelist_warning_pct,
            th.freelist_critical_pct,
            "vacuum",
            f"{r.freelist_count:,} of {r.page_count:,} pages are free ({free:.1f}%)",
            ": VACUUM returns them to the disk",
        ),
        _days_left_finding(r, th),
    ]


def _days_left_finding(r: HealthReport, th: Thresholds) -> Finding:
    rate, limit = r.growth_bytes_per_day, th.days_left_warning
    if rate is None:
        why = "growth unknown: it needs a history of db_bytes samples at least an hour apart"
        return Finding("days_left", r.key, None, limit, "unavailable", None, why)
    if r.days_left is None:
        return Finding("days_left", r.key, None, limit, "ok", None, f"not growing ({rate / 1e6:+.3f} MB/day)")
    severity: Severity = "warning" if r.days_left < limit else "ok"
    what = f"{r.days_left:.1f} days to {th.size_warning_bytes / 1e6:.0f} MB at {rate / 1e6:+.3f} MB/day"
    return _judged(
        "days_left", r.key, round(r.days_left, 2), limit, severity, "archive", what, ": plan archiving"
    )


def _index_findings(r: HealthReport, th: Thresholds) -> list[Finding]:
    if not r.dbstat:
        why = "index bloat not measured: this SQLite build has no dbstat table (ENABLE_DBSTAT_VTAB)"
        return [Finding("dbstat", r.key, None, None, "unavailable", None, why)]
    return [
        _above(
            "index_unused_pct",
            i.name,
            i.unused_pct,
            th.index_unused_warning_pct,
            th.index_unused_critical_pct,
            "reindex",
            f"{i.unused_pct:.1f}% of {i.name} on {i.table} ({i.bytes / 1e6:.1f} MB) is unused",
            f": REINDEX {i.name}",
        )
        for i in r.indexes
        if i.bytes is not None and i.unused_pct is not None and i.bytes >= th.index_min_bytes
    ]


def _query_findings(q: QueryHealth, th: Thresholds) -> list[Finding]:
    if q.error is not None or q.p95_ms is None or q.max_ms is None:
        return [
            Finding("query_plan", q.name, q.error, None, "critical", "investigate", f"{q.name}: {q.error}")
        ]
    slow: Severity = "warning" if q.p95_ms > th.query_slow_p95_ms else "ok"
    worst: Severity = "critical" if q.max_ms > th.query_critical_ms else "ok"
    plan: Severity = "ok" if q.plan_problem is None else "critical" if worst == "critical" else "warning"
    base = "" if q.baseline_p95_ms is None else f" (baseline after its migration: {q.baseline_p95_ms:.3f} ms)"
    plan_ok = f"uses {q.expect_index}" if q.expect_index else "no index declared"
    return [
        _judged(
            "query_p95_ms",
            q.name,
            round(q.p95_ms, 3),
            th.query_slow_p95_ms,
            slow,
            "investigate",
            f"{q.name}: p95 {q.p95_ms:.3f} ms over {q.runs} runs{base}",
            ": read its plan",
        ),
        _judged(
            "query_max_ms",
            q.name,
            round(q.max_ms, 3),
            th.query_critical_ms,
            worst,
            "investigate",
            f"{q.name}: slowest run {q.max_ms:.3f} ms",
            ": look for a missing index",
        ),
        _judged(
            "query_plan",
            q.name,
            "; ".join(q.plan),
            q.expect_index,
            plan,
            "investigate",
            f"{q.name}: {q.plan_problem or plan_ok}",
            "",
        ),
    ]


def _stats_findings(r: HealthReport, th: Thresholds) -> list[Finding]:
    found: list[Finding] = []
    why = "no sqlite_stat1 row" if r.stat1 else "the database has no sqlite_stat1 table"
    for s in r.stats:
        for i in (i for i in r.indexes if i.table == s.table and s.rows):
            severity: Severity = "warning" if i.name in s.missing_indexes else "ok"
            what = f"{i.name} on {s.table}: " + ("analyzed" if severity == "ok" else why)
            fix = f", the planner guesses its selectivity: ANALYZE {i.name}"
            found.append(_judged("stats_missing", i.name, None, None, severity, "analyze", what, fix))
        if s.stat_rows is not None:
            drift = round(abs(s.rows - s.stat_rows) / max(s.rows, 1), 4)
            severity = "warning" if drift > th.stats_drift_ratio else "ok"
            what = f"{s.table}: {s.rows:,} rows, its statistics say {s.stat_rows:,}"
            fix = f": ANALYZE {s.table}"
            found.append(
                _judged("stats_drift", s.table, drift, th.stats_drift_ratio, severity, "analyze", what, fix)
            )
    return found


def _run_findings(r: HealthReport, th: Thresholds) -> list[Finding]:
    found = []
    if r.quick_check is not None:
        severity: Severity = "ok" if r.quick_check == "ok" else "critical"
        what, fix = f"quick_check: {r.quick_check}", f". Try: {CORRUPT_HINT}"
        found.append(_judged("quick_check", r.key, r.quick_check, "ok", severity, "investigate", what, fix))
    what = f"{r.failed_runs} of {r.total_runs} liteshift runs failed in the last {RUN_WINDOW.days} days"
    rate = r.error_rate_pct
    if rate is None:
        return [*found, Finding("error_rate", r.key, None, th.error_rate_warning_pct, "ok", None, what)]
    warn, crit = th.error_rate_warning_pct, th.error_rate_critical_pct
    return [
        *found,
        _above("error_rate", r.key, round(rate, 2), warn, crit, "investigate", what, ": read their reports"),
    ]


def judge(r: HealthReport, th: Thresholds) -> list[Finding]:
    """Every finding of a report: ok ones too (a recovery is computed from them)."""
    found = _size_findings(r, th) + _index_findings(r, th)
    for q in r.queries:
        found += _query_findings(q, th)
    return found + _stats_findings(r, th) + _run_findings(r, th)


# ---------------------------------------------------------------------------------------------
# The measurement


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


# ---------------------------------------------------------------------------------------------
# Rendering

MARK = {"ok": "✅", "warning": "⚠️", "critical": "🛑", "unavailable": "❔"}


def _value(v: float | str | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.3f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def render_markdown(report: HealthReport, trend_png: str | Sequence[str] | None = None) -> str:
    """The health report as markdown (a Prefect artifact), measured figures only.

    trend_png: the path of a trend chart, or several, each linked.
    """
    r = report
    pngs = [trend_png] if isinstance(trend_png, str) else list(trend_png or [])
    breaches = r.breaches()
    lines = [
        f"# Database health: {Path(r.database).name}",
        "",
        f"- **Database**: `{r.database}` (key `{r.key}`)",
        f"- **Measured**: {r.measured_at} in {r.seconds:.2f} s; "
        f"{len(breaches)} breach(es) of {len(r.findings)} finding(s)",
        f"- **Size**: file {r.db_bytes / 1e6:.2f} MB, WAL {r.wal_bytes / 1e6:.2f} MB, "
        f"{r.page_count:,} pages of {r.page_size} B, {r.freelist_count:,} free ({r.freelist_pct:.1f}%)",
        "- **Growth**: "
        + (
            "unknown (too little history)"
            if r.growth_bytes_per_day is None
            else f"{r.growth_bytes_per_day / 1e6:+.2f} MB/day"
            + (f", {r.days_left:.1f} days to the size warning" if r.days_left is not None else "")
        ),
        f"- **liteshift runs, last {RUN_WINDOW.days} days**: {r.failed_runs} failed of {r.total_runs}",
        f"- **quick_check**: {r.quick_check or 'not run this time'}",
    ]
    if pngs:
        lines.append("- **Trend**: " + ", ".join(f"[{Path(p).name}]({p})" for p in pngs))
    lines += ["", "## Findings", "", "| | Metric | Object | Value | Threshold | Action | Message |"]
    lines.append("|---|---|---|---|---|---|---|")
    order = {"critical": 0, "warning": 1, "unavailable": 2, "ok": 3}
    for f in sorted(r.findings, key=lambda f: order[f.severity]):
        lines.append(
            f"| {MARK[f.severity]} {f.severity} | {f.metric} | {f.object} | {_value(f.value)} "
            f"| {_value(f.threshold)} | {f.action or '—'} | {f.message} |"
        )
    return "\n".join(lines + _index_section(r) + _query_section(r)) + "\n"


def _index_section(r: HealthReport) -> list[str]:
    if not r.indexes:
        return []
    lines = ["", "## Indexes", "", "| Index | Table | MB | Unused % |", "|---|---|---|---|"]
    for i in r.indexes:
        size = "—" if i.bytes is None else f"{i.bytes / 1e6:.2f}"
        lines.append(f"| {i.name} | {i.table} | {size} | {_ms(i.unused_pct)} |")
    return lines


def _query_section(r: HealthReport) -> list[str]:
    if not r.queries:
        return []
    lines = [
        "",
        "## Declared queries",
        "",
        "| Query | Migration | p50 / p95 / p99 / max ms | Runs | Baseline p95 ms | Plan |",
        "|---|---|---|---|---|---|",
    ]
    for q in r.queries:
        times = " / ".join(_ms(v) for v in (q.p50_ms, q.p95_ms, q.p99_ms, q.max_ms))
        plan = q.error or q.plan_problem or "; ".join(q.plan)
        lines.append(f"| {q.name} | {q.migration} | {times} | {q.runs} | {_ms(q.baseline_p95_ms)} | {plan} |")
    return lines


def table_rows(report: HealthReport) -> list[dict[str, Any]]:
    """One row per finding, breaches first (a Prefect table artifact)."""
    order = {"critical": 0, "warning": 1, "unavailable": 2, "ok": 3}
    return [
        {
            "severity": f.severity,
            "metric": f.metric,
            "object": f.object,
            "value": f.value,
            "threshold": f.threshold,
            "action": f.action,
            "message": f.message,
        }
        for f in sorted(report.findings, key=lambda f: order[f.severity])
    ]
