"""Judging a measured report against the thresholds: one finding per metric and object."""

from __future__ import annotations

from liteshift.core.db import (
    CORRUPT_HINT,
)
from liteshift.health.model import Action, Finding, HealthReport, QueryHealth, Severity
from liteshift.health.thresholds import RUN_WINDOW, Thresholds

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
