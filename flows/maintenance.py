"""The `database-maintenance` flow: one repair, through the same safe path as a migration.

Checked, inside its window with a predicted duration that fits, one run per database, under the
database's liteshift lock, backed up, then acted and verified (liteshift.health.maintenance), recorded in
the health history, and measured again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from liteshift.core import guard, lock
from liteshift.core.config import RunConfig, default_migrations_dir, default_report_dir
from liteshift.core.db import connection
from liteshift.core.migrations import Query, load_migrations
from liteshift.core.names import db_key
from liteshift.core.tracking import applied_queries, read_tracking
from liteshift.flows.concurrency import one_run_per_database
from liteshift.flows.health import measure_task
from liteshift.flows.runtime import is_deployment_run
from liteshift.flows.steps import backup
from liteshift.flows.ui import tag_run
from liteshift.health import maintenance
from liteshift.health.history import History, history_path
from liteshift.health.thresholds import Thresholds


def _run_name() -> str:
    params = flow_run.parameters
    return f"maintain-{params.get('action', 'x')}-{Path(str(params.get('database', 'db'))).name}"


check = task(name="check-request", cache_policy=NO_CACHE)(maintenance.check_request)
window = task(name="maintenance-window", cache_policy=NO_CACHE)(maintenance.window_check)
act = task(name="act-and-verify", cache_policy=NO_CACHE)(maintenance.act)


@flow(name="database-maintenance", flow_run_name=_run_name, log_prints=False)
def maintain_database(
    database: str,
    action: str,
    objects: list[str] | None = None,
    approve_vacuum: bool = False,
    maintenance_window: str | None = None,
    migrations_dir: str | None = None,
    backup_dir: str | None = None,
    report_dir: str | None = None,
    busy_timeout_ms: int = 5000,
    thresholds: dict[str, Any] | None = None,
) -> maintenance.Maintenance:
    """Check, back up, act, verify (undo on failure), record; one action per run."""
    db = Path(database)
    reports = Path(report_dir) if report_dir else default_report_dir()
    migrations = Path(migrations_dir) if migrations_dir else default_migrations_dir()
    cfg = RunConfig.from_parameters(
        {
            "database": db,
            "migrations_dir": migrations,
            "backup_dir": backup_dir,
            "report_dir": reports,
            "busy_timeout_ms": busy_timeout_ms,
        }
    )
    if is_deployment_run():  # before anything is written
        guard.check_deployment_paths(cfg)
    history = History(history_path(reports))
    tag_run(db)
    req = maintenance.Request(
        db,
        action,  # type: ignore[arg-type]  # check_request refuses an unknown action
        tuple(objects or ()),
        approve_vacuum,
        maintenance_window,
        busy_timeout_ms,
        tuple(_declared_queries(db, migrations, busy_timeout_ms)),
    )
    check(req)
    fits = window(req, history.last_run_seconds(action, db_key(db)))
    maintenance.check_space(req)
    with one_run_per_database(db, 600.0, busy_timeout_ms), lock.held(db, busy_timeout_ms):
        if maintenance_window:  # again: the queue may have outlasted the window
            fits = window(req, history.last_run_seconds(action, db_key(db)))
        b = backup(cfg)
        result = act(req, b.path)
    result.prediction = fits
    history.record_run(action, db_key(db), result.seconds, result.status == "completed")
    # Measured again, so the history (and the next health run's events) see the repair at once.
    measure_task(db, migrations, reports, Thresholds.from_parameters(thresholds or {}), False)
    get_run_logger().info("Maintenance of %s: %s", db, result.message)
    create_markdown_artifact(
        key=f"liteshift-maintenance-{db_key(db)}",
        markdown=render(result),
        description=f"{action} of {db.name}",
    )
    return result


def _declared_queries(database: Path, migrations_dir: Path, timeout_ms: int) -> list[Query]:
    with connection(database, timeout_ms) as con:
        applied = read_tracking(con)
    return applied_queries(load_migrations(migrations_dir), applied)


def render(r: maintenance.Maintenance) -> str:
    """The maintenance run as markdown: what was done, verified, and measured."""
    lines = [
        f"# {r.action} of `{r.database}`: {r.status}",
        "",
        f"- {r.message}",
        f"- Window: {r.prediction}",
        f"- Mode: {r.mode}; {r.seconds:.3f} s in all, write lock {r.lock_seconds:.3f} s",
        f"- Backup: {r.backup_path}",
        f"- Free pages returned: {r.freed_bytes / 1e6:.1f} MB",
    ]
    lines += [f"- Verified: {v}" for v in r.verified]
    if r.queries:
        lines += ["", "| query | median before (ms) | median after (ms) |", "|---|---|---|"]
        lines += [f"| {name} | {b:.3f} | {a:.3f} |" for name, (b, a) in r.queries.items()]
    return "\n".join(lines) + "\n"
