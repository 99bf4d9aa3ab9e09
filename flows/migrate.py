"""The `migrate-database` flow: six steps in order, and the rollback subflow when one fails."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar, cast
from uuid import UUID

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff
from pydantic import ValidationError

from flows.rollback import rollback_migration
from liteshift import faults, guard, lock
from liteshift import migrations as mig
from liteshift.concurrency import one_run_per_database
from liteshift.config import RunConfig
from liteshift.errors import BadInput
from liteshift.report import RunReport, measure_sizes, render_markdown, slug
from liteshift.window import enforce_window
from tasks.approval import ask_approval
from tasks.backup import backup
from tasks.integrity import integrity
from tasks.migrate import migrate
from tasks.plan import plan, render_plan
from tasks.query_plan import benchmark_before, query_plans
from tasks.validate import validate
from tasks.verify_indexes import verify

T = TypeVar("T")
_PROGRESS_POSTER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="liteshift-progress")


def _run_name() -> str:
    return f"migrate-{Path(str(flow_run.parameters.get('database', 'db'))).name}"


def _tag_run(cfg: RunConfig) -> None:
    """Tag the flow run with the database's name so the UI can filter runs by database."""
    if not flow_run.id:
        return
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(str(flow_run.id)))
        client.update_flow_run(run.id, tags=sorted({*run.tags, "liteshift", f"db-{slug(cfg.database.name)}"}))


def build_config(**params: Any) -> RunConfig:
    """Validate flat flow parameters into a RunConfig, or raise BadInput naming the field."""
    try:
        return RunConfig(**{k: v for k, v in params.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise BadInput(
            f"Invalid parameter {field}", first["msg"], "see 'liteshift run --help' for the accepted values"
        ) from None


def _step(report: RunReport, name: str, call: Callable[[], T], detail: Callable[[T], str]) -> T:
    start = time.perf_counter()
    try:
        value = call()
    except BaseException as exc:
        report.record(name, "failed", time.perf_counter() - start, str(exc))
        raise
    report.record(name, "passed", time.perf_counter() - start, detail(value))
    return value


@flow(name="migrate-database", flow_run_name=_run_name, log_prints=False)
def migrate_database(
    database: str,
    migrations_dir: str | None = None,
    backup_dir: str | None = None,
    report_dir: str | None = None,
    integrity_level: str | None = None,
    plan_check: str | None = None,
    disk_factor: float | None = None,
    busy_timeout_ms: int | None = None,
    retries: int | None = None,
    retry_delay_s: float | None = None,
    bench_min_runs: int | None = None,
    bench_budget_s: float | None = None,
    maintenance_window: str | None = None,
    require_approval: bool | None = None,
    approval_timeout_s: int | None = None,
    queue_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Validate, back up, migrate, verify indexes, check integrity, check plans; roll back on failure."""
    cfg = build_config(
        database=database,
        migrations_dir=migrations_dir,
        backup_dir=backup_dir,
        report_dir=report_dir,
        integrity=integrity_level,
        plan_check=plan_check,
        disk_factor=disk_factor,
        busy_timeout_ms=busy_timeout_ms,
        retries=retries,
        retry_delay_s=retry_delay_s,
        bench_min_runs=bench_min_runs,
        bench_budget_s=bench_budget_s,
        maintenance_window=maintenance_window,
        require_approval=require_approval,
        approval_timeout_s=approval_timeout_s,
        queue_timeout_s=queue_timeout_s,
    )
    if guard.is_deployment_run():  # before anything, even a report, is written
        guard.check_deployment_paths(cfg)
    _tag_run(cfg)
    report = RunReport(database=str(cfg.database), flow_run_id=str(flow_run.id) if flow_run.id else None)
    try:
        _pipeline(cfg, report)
    except Exception as exc:
        report.status = "failed"
        report.error = str(exc)
        _publish(cfg, report)
        exc.liteshift_report = report  # type: ignore[attr-defined]
        raise
    _publish(cfg, report)
    return report.summary()


def _retrying(task_obj: Any, cfg: RunConfig) -> Any:
    return task_obj.with_options(
        retries=cfg.retries, retry_delay_seconds=exponential_backoff(cfg.retry_delay_s)
    )


def _pipeline(cfg: RunConfig, report: RunReport) -> None:
    logger = get_run_logger()
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
        report.warnings += _dead_run_warning(cfg)
        logger.info("Nothing to migrate in %s: %s applied", cfg.database, len(v.applied))
        return
    _step(report, "maintenance-window", lambda: enforce_window(cfg.maintenance_window), str)
    if cfg.require_approval:
        dry = _step(
            report,
            "dry-run",
            lambda: plan(cfg),
            lambda d: f"{len(d.pending)} pending; write lock {d.lock_seconds or 0:.3f} s on a copy",
        )
        _step(
            report,
            "approval",
            lambda: ask_approval(render_plan(dry), cfg.database, cfg.approval_timeout_s),
            str,
        )
    with one_run_per_database(cfg.database, cfg.queue_timeout_s, cfg.busy_timeout_ms):
        if cfg.maintenance_window:  # again: queueing or approval may have outlasted the window
            _step(report, "maintenance-window", lambda: enforce_window(cfg.maintenance_window), str)
        with lock.held(cfg.database, cfg.busy_timeout_ms):
            _locked_pipeline(cfg, report, v)


def _dead_run_warning(cfg: RunConfig) -> list[str]:
    """A run killed after its commit leaves its lock row: clear it and say the run never finished."""
    dead = lock.clear_stale(cfg.database, cfg.busy_timeout_ms)
    if dead is None:
        return []
    return [
        f"a previous run (host {dead.host} pid {dead.pid}) died while holding the lock; its lock "
        "was cleared. Its migrations are applied, but its verification and report may be missing: "
        "check the indexes and the last report"
    ]


def _locked_pipeline(cfg: RunConfig, report: RunReport, v: Any) -> None:
    """From the benchmark to the rollback, under the database's own liteshift lock."""
    logger = get_run_logger()
    queries = v.queries
    before = _step(
        report,
        "benchmark-before",
        lambda: _retrying(benchmark_before, cfg)(cfg, queries),
        lambda t: f"{len(t)} queries timed",
    )
    progress = _progress(cfg, "backup")
    b = _step(
        report,
        "backup",
        lambda: _retrying(backup, cfg)(cfg, on_progress=progress),
        lambda b: f"{b.path} ({b.bytes / 1e6:.1f} MB, {b.mb_per_s:.0f} MB/s)",
    )
    report.backup = {**asdict(b), "counts": b.counts}
    try:
        _after_backup(cfg, report, v, b.path, b.fingerprint, queries, before)
    except Exception as exc:
        logger.error("Step failed: %s; starting the rollback", exc)
        _rollback(cfg, report, v, b.path)
        raise
    report.status = "completed"


def _after_backup(
    cfg: RunConfig,
    report: RunReport,
    v: Any,
    backup_path: str,
    backup_fp: dict[str, list[int]],
    queries: list[mig.Query],
    before: dict[str, Any],
) -> None:
    fid = report.flow_run_id
    progress = _progress(cfg, "migrate")
    a = _step(
        report,
        "migrate",
        lambda: _retrying(migrate, cfg)(cfg, backup_path, backup_fp, fid, progress),
        lambda a: f"{', '.join(a.applied)}; write lock {a.lock_seconds:.3f} s",
    )
    report.applied, report.lock_seconds = a.applied, a.lock_seconds
    report.lock_wait_seconds = a.lock_wait_seconds
    report.checkpoint_seconds = a.checkpoint_seconds
    idx = _step(
        report,
        "verify-indexes",
        lambda: _retrying(verify, cfg)(cfg, v.indexes),
        lambda i: f"{len(i)} indexes as declared",
    )
    report.indexes = [asdict(i) for i in idx]
    g = _step(
        report,
        "integrity",
        lambda: _retrying(integrity, cfg)(cfg, v.touched_tables, v.index_only, a.rows_changed),
        lambda g: f"integrity_check of {len(g.checked_tables)} table(s): ok",
    )
    report.integrity = asdict(g)
    results = _step(
        report,
        "query-plan-benchmark",
        lambda: _retrying(query_plans, cfg)(cfg, queries, before),
        lambda r: f"{len(r)} queries use their indexes",
    )
    report.queries = [asdict(r) for r in results]
    report.warnings += [w for r in results for w in r.warnings]
    report.size_after, report.index_bytes = measure_sizes(cfg.database, list(v.indexes))


def _rollback(cfg: RunConfig, report: RunReport, v: Any, backup_path: str) -> None:
    versions = [label.split("_", 1)[0] for label in v.pending]
    try:
        report.rollback = rollback_migration(
            str(cfg.database), str(cfg.migrations_dir), versions, backup_path, cfg.busy_timeout_ms
        )
        report.applied = []
    except Exception as exc:
        report.rollback = {"action": "refused", "message": str(exc), "verified": []}
        report.warnings.append(f"ROLLBACK DID NOT COMPLETE: {exc}")


def _progress(cfg: RunConfig, what: str) -> Callable[[float], None] | None:
    """A progress artifact for a long step, updated by the step's callback (0.0 to 1.0)."""
    try:
        artifact_id = create_progress_artifact(
            0.0,
            key=f"liteshift-{what}-{slug(cfg.database.name)}",
            description=f"{what} of {cfg.database.name}",
        )
    except Exception:  # progress is nice to have; never fail a migration over it
        return None

    def update(fraction: float) -> None:
        # Posted from a thread: the migrate step calls this while it holds the write lock, and an
        # API round trip must not lengthen the lock.
        _PROGRESS_POSTER.submit(update_progress_artifact, cast(UUID, artifact_id), round(fraction * 100, 1))

    return update


def _publish(cfg: RunConfig, report: RunReport) -> None:
    """Write the report file and the markdown and table artifacts, keyed by the database."""
    path = report.write(cfg.report_dir)
    faults.point("report-written")
    key = slug(cfg.database.name)
    create_markdown_artifact(
        key=f"liteshift-report-{key}",
        markdown=render_markdown(report),
        description=f"liteshift execution report for {cfg.database.name}",
    )
    if report.queries:
        create_table_artifact(
            key=f"liteshift-bench-{key}",
            table=_bench_rows(report),
            description=f"Declared queries before/after, {cfg.database.name}",
        )
    get_run_logger().info("Report written to %s", path)


def _bench_rows(report: RunReport) -> list[dict[str, Any]]:
    rows = []
    for q in report.queries:
        b, a = q.get("before") or {}, q.get("after") or {}
        rows.append(
            {
                "query": q["name"],
                "index": q["plan"]["index"],
                "before_p50_ms": b.get("p50_ms"),
                "before_p95_ms": b.get("p95_ms"),
                "after_p50_ms": a.get("p50_ms"),
                "after_p95_ms": a.get("p95_ms"),
                "runs_before": b.get("runs"),
                "runs_after": a.get("runs"),
            }
        )
    return rows
