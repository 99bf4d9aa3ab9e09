"""The `database-health` flow: measure read-only, keep the history, alert on changes of state,
and schedule the repairs into the next maintenance window.

Measuring never writes to the monitored database (liteshift.health.measure); the history lives in a
SQLite file beside the reports (liteshift.health.history). An event goes out only when a metric of an
object changes state (breached, escalated, recovered); the shipped automation
(deployments/automations/health-critical.yaml) turns a critical one into a notification.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun
from prefect.events import emit_event
from prefect.runtime import flow_run

from liteshift.core import guard
from liteshift.core.config import default_migrations_dir, default_report_dir
from liteshift.core.db import connection
from liteshift.core.names import db_key, slug
from liteshift.core.tracking import read_tracking
from liteshift.core.window import parse_window
from liteshift.flows.runtime import is_deployment_run
from liteshift.flows.ui import tag_run
from liteshift.health.history import History, history_path
from liteshift.health.measure import measure
from liteshift.health.model import HealthReport
from liteshift.health.plot import Series, line_chart_png
from liteshift.health.render import render_markdown, table_rows
from liteshift.health.thresholds import Thresholds

WATCH_DAYS = 7  # the report's "days 1-7 after the migration": hourly runs, daily after that
QUICK_CHECK_EVERY = timedelta(days=7)
REPAIRS = ("analyze", "reindex", "vacuum")


def _run_name() -> str:
    return f"health-{Path(str(flow_run.parameters.get('database', 'db'))).name}"


@task(name="measure-health", cache_policy=NO_CACHE)
def measure_task(
    database: Path, migrations_dir: Path, report_dir: Path, thresholds: Thresholds, quick: bool
) -> HealthReport:
    """Measure every metric once (read-only) and keep the samples in the history."""
    history = History(history_path(report_dir))
    report = measure(
        database,
        migrations_dir=migrations_dir,
        report_dir=report_dir,
        thresholds=thresholds,
        history=history,
        quick_check=quick,
    )
    history.record(report)
    return report


@task(name="emit-changes", cache_policy=NO_CACHE)
def emit_changes(report: HealthReport, report_dir: Path) -> list[str]:
    """One Prefect event per metric and object whose state changed since the last run."""
    sent = []
    for finding, change in History(history_path(report_dir)).transitions(report.key, report.findings):
        emit_event(
            event=f"liteshift.health.{change}",
            resource={
                "prefect.resource.id": (
                    f"liteshift.health.{report.key}.{finding.metric}.{slug(finding.object)}"
                ),
                "prefect.resource.name": f"{finding.metric} of {finding.object}",
                "liteshift.database": report.database,
                "liteshift.metric": finding.metric,
                "liteshift.object": finding.object,
                "liteshift.severity": finding.severity,
            },
            payload={
                "value": finding.value,
                "threshold": finding.threshold,
                "action": finding.action,
                "message": finding.message,
            },
        )
        sent.append(f"{change}: {finding.metric} of {finding.object} ({finding.severity})")
    return sent


@task(name="schedule-repairs", cache_policy=NO_CACHE)
def schedule_repairs(
    report: HealthReport,
    maintenance_window: str,
    maintenance_deployment: str,
    approve_vacuum: bool,
    archive_deployment: str | None,
    archive_parameters: dict[str, Any] | None,
    migrations_dir: Path,
    report_dir: Path,
    now: datetime | None = None,
) -> list[str]:
    """Each repair a breach calls for, as one run of the maintenance (or archive) deployment at
    the next window opening; the idempotency key makes it once per action, object and window."""
    from prefect.deployments import run_deployment

    opening = parse_window(maintenance_window).next_opening(now or datetime.now(UTC))
    scheduled, seen = [], set()
    for f in report.breaches():
        if f.action in REPAIRS and (f.action != "vacuum" or approve_vacuum):
            name, params = (
                maintenance_deployment,
                {
                    "database": report.database,
                    "action": f.action,
                    "objects": [] if f.action == "vacuum" else [f.object],
                    "approve_vacuum": approve_vacuum,
                    "maintenance_window": maintenance_window,
                    # The same declared queries to keep, and the same history to record into.
                    "migrations_dir": str(migrations_dir),
                    "report_dir": str(report_dir),
                },
            )
        elif f.action == "archive" and archive_deployment and archive_parameters:
            name, params = archive_deployment, {"database": report.database, **archive_parameters}
        else:
            continue
        key = f"liteshift:{report.key}:{f.action}:{params.get('objects', '')}:{opening.isoformat()}"
        if key in seen:
            continue
        seen.add(key)
        run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync call: a FlowRun
            name,
            parameters=params,
            scheduled_time=opening,
            idempotency_key=key,
            timeout=0,
            as_subflow=False,
            tags=["liteshift", f"db-{report.key}", "liteshift-repair"],
        )
        scheduled.append(f"{f.action} {f.object}: flow run {run.id} at {opening:%a %Y-%m-%d %H:%M %Z}")
    return scheduled


@flow(name="database-health", flow_run_name=_run_name, log_prints=False)
def check_database_health(
    database: str,
    migrations_dir: str | None = None,
    report_dir: str | None = None,
    thresholds: dict[str, Any] | None = None,
    watch: str = "daily",
    quick_check: bool | None = None,
    maintenance_window: str | None = None,
    maintenance_deployment: str | None = None,
    approve_vacuum: bool = False,
    archive_deployment: str | None = None,
    archive_parameters: dict[str, Any] | None = None,
) -> HealthReport | None:
    """Measure, record, alert on changes, publish, and schedule repairs into the window.

    watch="hourly" measures only in the days 1-7 after the newest migration (the hourly
    deployment); "daily" always measures. quick_check None: when none ran in the last 7 days.
    """
    db = Path(database)
    reports = Path(report_dir) if report_dir else default_report_dir()
    migrations = Path(migrations_dir) if migrations_dir else default_migrations_dir()
    limits = Thresholds.from_parameters(thresholds or {})
    if is_deployment_run():  # the history and plots are written under report_dir
        roots = guard.allowed_roots()
        guard.require_under(db, "database", roots)
        guard.require_under(reports, "report directory", [*roots, default_report_dir()])
    tag_run(db)
    log = get_run_logger()
    if watch == "hourly" and not _watching(db):
        log.info("%s: no migration in the last %d days; the daily run watches it", db, WATCH_DAYS)
        return None
    history = History(history_path(reports))
    quick = quick_check if quick_check is not None else _quick_check_due(history, db_key(db))
    report = measure_task(db, migrations, reports, limits, quick)
    for line in emit_changes(report, reports):
        log.info("Event: %s", line)
    publish(report, reports, history)
    if maintenance_window and maintenance_deployment:
        repair = (maintenance_window, maintenance_deployment, approve_vacuum)
        archive = (archive_deployment, archive_parameters)
        for line in schedule_repairs(report, *repair, *archive, migrations, reports):
            log.info("Scheduled: %s", line)
    return report


def _watching(database: Path) -> bool:
    """True within WATCH_DAYS of the newest migration applied to the database."""
    with connection(database, readonly=True) as con:  # the monitored file: never a byte written
        applied = read_tracking(con)
    if not applied:
        return False
    newest = max(datetime.fromisoformat(r.applied_at) for r in applied.values())
    return datetime.now(UTC) - newest <= timedelta(days=WATCH_DAYS)


def _quick_check_due(history: History, key: str) -> bool:
    since = datetime.now(UTC) - QUICK_CHECK_EVERY
    return not history.series(key, "quick_check", key, since)


def publish(report: HealthReport, report_dir: Path, history: History) -> None:
    """A markdown and a table artifact per database, with trend plots of the last 7 and 30 days."""
    pngs = [trend_png(report, report_dir, history, days) for days in (7, 30)]
    create_markdown_artifact(
        key=f"liteshift-health-{report.key}",
        markdown=render_markdown(report, [str(p) for p in pngs]),
        description=f"Health of {Path(report.database).name}",
    )
    create_table_artifact(
        key=f"liteshift-health-table-{report.key}",
        table=with_trends(table_rows(report), report.key, history),
        description=f"Health findings of {Path(report.database).name}",
    )


def with_trends(rows: list[dict[str, Any]], key: str, history: History) -> list[dict[str, Any]]:
    """Each finding's row with the lowest and highest value the history holds for the last 7 and
    30 days: whether a figure is new, creeping or back to normal."""
    now = datetime.now(UTC)
    for row in rows:
        for days in (7, 30):
            since = now - timedelta(days=days)
            values = [v for _, v in history.series(key, row["metric"], row["object"], since)]
            row[f"min_{days}d"] = round(min(values), 3) if values else None
            row[f"max_{days}d"] = round(max(values), 3) if values else None
    return rows


def trend_png(report: HealthReport, report_dir: Path, history: History, days: int) -> Path:
    """The database's size over the last `days` days, with the size threshold drawn."""
    now = datetime.now(UTC)
    since = now - timedelta(days=days)
    points = [(t.timestamp(), v / 1e6) for t, v in history.series(report.key, "db_bytes", report.key, since)]
    threshold = next((f.threshold for f in report.findings if f.metric == "db_bytes"), None)
    return line_chart_png(
        report_dir / "health" / f"{report.key}-{days}d.png",
        f"{Path(report.database).name}: size, last {days} days",
        [Series("database MB", points, (31, 119, 180))],
        y_label="MB",
        threshold=threshold / 1e6 if isinstance(threshold, (int, float)) else None,
        x_range=(since.timestamp(), now.timestamp()),
    )
