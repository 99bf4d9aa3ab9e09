"""The `migrate-database` flow: the steps in order, and the rollback subflow when one fails.

It composes the steps (liteshift.flows.steps) and decides what happens on failure; everything it
knows of the run is kept in a RunReport, which the CLI and the UI render.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from prefect import Task, flow, get_run_logger
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from liteshift.core import faults, guard, lock
from liteshift.core.config import RunConfig
from liteshift.core.db import free_page_bytes, measure_sizes
from liteshift.core.errors import BadInput
from liteshift.core.window import check_fits, enforce_window
from liteshift.flows.approval import ask_approval
from liteshift.flows.concurrency import one_run_per_database
from liteshift.flows.rollback import rollback_migration
from liteshift.flows.runtime import is_deployment_run
from liteshift.flows.steps import (
    backup,
    dry_run,
    integrity,
    migrate,
    query_plans,
    rebuild_copy,
    validate,
    verify,
)
from liteshift.flows.ui import progress, publish_report, tag_run
from liteshift.migrate.restore import trim_ledger
from liteshift.rebuild.online import finish_leftovers
from liteshift.rebuild.schema import merge_copy_stats
from liteshift.tasks.backup import Backup
from liteshift.tasks.dry_run import render_plan
from liteshift.tasks.report import RunReport, render_markdown
from liteshift.tasks.rollback import Rollback
from liteshift.tasks.validate import Validation

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


def _run_name() -> str:
    return f"migrate-{Path(str(flow_run.parameters.get('database', 'db'))).name}"


def _step(report: RunReport, name: str, call: Callable[[], T], detail: Callable[[T], str]) -> T:
    start = time.perf_counter()
    try:
        value = call()
    except BaseException as exc:
        report.record(name, "failed", time.perf_counter() - start, str(exc))
        raise
    report.record(name, "passed", time.perf_counter() - start, detail(value))
    return value


# The parameters are RunConfig's fields, flat, with the same names; None means RunConfig's
# default. tests/test_deploy_config.py fails when the two drift apart.
@flow(name="migrate-database", flow_run_name=_run_name, log_prints=False)
def migrate_database(
    database: str,
    migrations_dir: str | None = None,
    backup_dir: str | None = None,
    report_dir: str | None = None,
    integrity: str | None = None,
    disk_factor: float | None = None,
    busy_timeout_ms: int | None = None,
    retries: int | None = None,
    retry_delay_s: float | None = None,
    plan_check: str | None = None,
    bench_min_runs: int | None = None,
    bench_max_runs: int | None = None,
    bench_budget_s: float | None = None,
    rebuild_mode: str | None = None,
    index_mode: str | None = None,
    revert_window_h: float | None = None,
    wal_limit_mb: float | None = None,
    maintenance_window: str | None = None,
    require_approval: bool | None = None,
    approval_timeout_s: int | None = None,
    queue_timeout_s: float | None = None,
    expected_host: str | None = None,
) -> RunReport:
    """Validate, back up, migrate, verify indexes, check integrity, check plans; roll back on failure."""
    cfg = RunConfig.from_parameters(locals())
    tag_run(cfg.database)  # first: a fleet finds the run of a database by its tags, refused or not
    guard.check_host(cfg.expected_host)  # a fleet run routed to the wrong worker opens nothing
    if is_deployment_run():  # before anything, even a report, is written
        guard.check_deployment_paths(cfg)
    report = RunReport(database=str(cfg.database), flow_run_id=str(flow_run.id) if flow_run.id else None)
    try:
        _pipeline(cfg, report)
    except Exception as exc:
        report.status = "refused" if report.backup is None and isinstance(exc, BadInput) else "failed"
        report.error = str(exc)
        _publish(cfg, report)
        exc.liteshift_report = report  # type: ignore[attr-defined]
        raise
    _publish(cfg, report)
    return report


def _retrying(task_obj: Task[P, R], cfg: RunConfig) -> Task[P, R]:
    return task_obj.with_options(
        retries=cfg.retries, retry_delay_seconds=exponential_backoff(cfg.retry_delay_s)
    )


def _pipeline(cfg: RunConfig, report: RunReport) -> None:
    v = _step(
        report,
        "validate",
        lambda: _retrying(validate, cfg)(cfg),
        lambda v: f"{v.check}; {len(v.pending)} pending",
    )
    report.pending, report.journal_mode = v.pending, v.journal_mode
    report.size_before = v.size_bytes
    report.warnings += v.warnings
    if not v.pending:
        report.status = "nothing-to-do"
        report.warnings += lock.clear_dead_run(cfg.database, cfg.busy_timeout_ms)
        report.warnings += finish_leftovers(str(cfg.database), cfg.busy_timeout_ms)
        report.warnings += trim_ledger(str(cfg.database), cfg.busy_timeout_ms)
        get_run_logger().info("Nothing to migrate in %s: %s applied", cfg.database, len(v.applied))
        return
    _step(report, "maintenance-window", lambda: enforce_window(cfg.maintenance_window), str)
    fits: Callable[[], str] = lambda: enforce_window(cfg.maintenance_window)  # noqa: E731
    if cfg.require_approval or cfg.maintenance_window:
        # The rehearsal measures the backup (the same copy) and the migration, so a run that
        # would commit after the window closes is refused before it writes.
        dry = _step(
            report,
            "dry-run",
            lambda: dry_run(cfg),
            lambda d: f"{len(d.pending)} pending; write lock {d.lock_seconds or 0:.3f} s on a copy",
        )
        if cfg.maintenance_window and dry.error is None:
            basis = (
                f"rehearsal on a copy: backup {dry.copy_seconds:.1f} s + migrate {dry.apply_seconds:.1f} s"
            )
            fits = lambda: check_fits(  # noqa: E731
                cfg.maintenance_window, dry.copy_seconds + dry.apply_seconds, basis
            )
            _step(report, "window-fit", fits, str)
    if cfg.require_approval:
        _step(
            report,
            "approval",
            lambda: ask_approval(render_plan(dry), cfg.database, cfg.approval_timeout_s),
            str,
        )
    with one_run_per_database(cfg.database, cfg.queue_timeout_s, cfg.busy_timeout_ms):
        if cfg.maintenance_window:  # again: queueing or approval may have outlasted the window
            _step(report, "maintenance-window", fits, str)
        with lock.held(cfg.database, cfg.busy_timeout_ms):
            _locked_pipeline(cfg, report, v)


def _locked_pipeline(cfg: RunConfig, report: RunReport, v: Validation) -> None:
    """From the backup to the rollback, under the database's own liteshift lock."""
    on_progress = progress(cfg.database, "backup")
    b = _step(
        report,
        "backup",
        lambda: _retrying(backup, cfg)(cfg, on_progress=on_progress, watch_writes=v.watch_tables),
        lambda b: f"{b.path} ({b.bytes / 1e6:.1f} MB, {b.mb_per_s:.0f} MB/s)",
    )
    report.backup = b
    try:
        _after_backup(cfg, report, v, b)
    except Exception as exc:
        get_run_logger().error("Step failed: %s; starting the rollback", exc)
        _rollback(cfg, report, v, b.path)
        raise
    report.status = "completed"


def _after_backup(cfg: RunConfig, report: RunReport, v: Validation, b: Backup) -> None:
    fid = report.flow_run_id
    copied = []
    if v.rebuilds or v.index_builds:
        copied = _step(
            report,
            "rebuild-copy",
            lambda: _retrying(rebuild_copy, cfg)(cfg, progress(cfg.database, "rebuild-copy")),
            lambda c: (
                f"{sum(s.rows for s in c):,} rows copied online in {sum(s.batches for s in c)} batches"
                if c
                else "every rebuild and index is small enough to build inside the migration's transaction"
            ),
        )
    on_progress = progress(cfg.database, "migrate")
    a = _step(
        report,
        "migrate",
        lambda: _retrying(migrate, cfg)(cfg, b.path, fid, on_progress),
        lambda a: f"{', '.join(a.applied)}; write lock {a.lock_seconds:.3f} s",
    )
    report.applied, report.lock_seconds = a.applied, a.lock_seconds
    report.lock_wait_seconds, report.checkpoint_seconds = a.lock_wait_seconds, a.checkpoint_seconds
    report.seconds_to_lock = a.locked_at - report.t0
    report.rebuilds = merge_copy_stats(copied, a.rebuilds)
    report.indexes = _step(
        report,
        "verify-indexes",
        lambda: _retrying(verify, cfg)(cfg, v.indexes),
        lambda i: f"{len(i)} indexes as declared",
    )
    report.integrity = _step(
        report,
        "integrity",
        lambda: _retrying(integrity, cfg)(cfg, v.touched_tables, v.index_only, a.rows_changed),
        lambda g: f"integrity_check of {len(g.checked_tables)} table(s): ok",
    )
    report.queries = _step(
        report,
        "query-plan-benchmark",
        lambda: _retrying(query_plans, cfg)(cfg, v.queries, b.path),
        lambda r: f"{len(r)} queries use their indexes; before timed on the backup",
    )
    report.warnings += [w for r in report.queries for w in r.warnings]
    report.size_after, report.index_bytes = measure_sizes(cfg.database, list(v.indexes))
    if report.rebuilds:
        report.free_after = free_page_bytes(cfg.database)


def _rollback(cfg: RunConfig, report: RunReport, v: Validation, backup_path: str) -> None:
    versions = [label.split("_", 1)[0] for label in v.pending]
    try:
        report.rollback = rollback_migration(
            str(cfg.database),
            str(cfg.migrations_dir),
            versions,
            backup_path,
            cfg.busy_timeout_ms,
            cfg.rebuild_mode,
        )
        report.applied = []
    except Exception as exc:
        report.rollback = Rollback("refused", [], str(exc))
        report.warnings.append(f"ROLLBACK DID NOT COMPLETE: {exc}")


def _publish(cfg: RunConfig, report: RunReport) -> None:
    """Write the report file and the markdown and table artifacts, keyed by the database."""
    path = report.write(cfg.report_dir)
    faults.point("report-written")
    publish_report(report, render_markdown(report))
    get_run_logger().info("Report written to %s", path)
