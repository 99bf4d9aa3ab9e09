"""What the Prefect UI shows of a run: its tags, progress bars, and report artifacts.

Every key and tag carries the database's key (file name + a short hash of its resolved path), so
two databases of the same name never overwrite each other's artifacts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import get_client
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from liteshift.core.names import db_key
from liteshift.core.progress import Progress, Tick, line, wal_bytes
from liteshift.tasks.report import RunReport
from liteshift.tasks.rollback import Rollback

_poster: ThreadPoolExecutor | None = None


# Tags for the next run that tags itself, and only that one: a fleet's batch sets its database's
# tags here for the migrate-database subflow it starts. Prefect's tags() context would tag every
# subflow of that run as well (its rollback), which the fleet would take for the database's run.
RUN_TAGS: ContextVar[tuple[str, ...]] = ContextVar("liteshift_run_tags", default=())


def tag_run(database: Path) -> None:
    """Tag the flow run with the database's key so the UI can filter runs by database (and with
    RUN_TAGS, which it then empties)."""
    if not flow_run.id:
        return
    extra = RUN_TAGS.get()
    RUN_TAGS.set(())
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(str(flow_run.id)))
        tags = {*run.tags, "liteshift", f"db-{db_key(database)}", *extra}
        client.update_flow_run(run.id, tags=sorted(tags))


def progress(database: Path, what: str) -> Progress | None:
    """A progress artifact for a long step, updated by the step's ticks: the bar is the phase's
    fraction, the description the line a terminal shows (phase, done of total, rate, time left)."""
    try:
        artifact_id = create_progress_artifact(
            0.0, key=f"liteshift-{what}-{db_key(database)}", description=f"{what} of {database.name}"
        )
    except Exception:  # progress is nice to have; never fail a migration over it
        return None
    started: dict[str, tuple[float, int]] = {}  # phase: when and where it was first told
    posted: list[tuple[str, float, float]] = [("", -1.0, 0.0)]  # phase, percent, when

    def update(tick: Tick) -> None:
        now = time.monotonic()
        since, first = started.setdefault(tick.phase, (now, tick.done))
        pct = round(tick.fraction * 100, 1)
        phase, shown, at = posted[0]
        if (phase, shown) == (tick.phase, pct) or (phase == tick.phase and pct < 100 and now - at < 1.0):
            return  # at most one post a second within a phase; its start and end always
        posted[0] = (tick.phase, pct, now)
        wal = wal_bytes(tick.database) if tick.database else None
        text = f"{line(tick, since, first, now, wal)} ({database.name})"
        # Posted from a thread: the migrate step calls this while it holds the write lock, and an
        # API round trip must not lengthen the lock.
        _post(update_progress_artifact, cast(UUID, artifact_id), pct, text)

    return update


def _post(fn: Callable[..., Any], *args: Any) -> None:
    global _poster
    if _poster is None:
        _poster = ThreadPoolExecutor(max_workers=1, thread_name_prefix="liteshift-progress")
    _poster.submit(fn, *args)


def publish_report(report: RunReport, markdown: str) -> None:
    """The markdown report and the before/after table as artifacts keyed by the database."""
    name = Path(report.database).name
    create_markdown_artifact(
        key=f"liteshift-report-{report.key}",
        markdown=markdown,
        description=f"liteshift execution report for {name}",
    )
    if report.queries:
        create_table_artifact(
            key=f"liteshift-bench-{report.key}",
            table=bench_rows(report),
            description=f"Declared queries before/after, {name}",
        )


def bench_rows(report: RunReport) -> list[dict[str, Any]]:
    """One row per declared query: plan's index, p50/p95 before and after, runs."""
    return [
        {
            "query": q.name,
            "index": q.plan.index,
            "before_p50_ms": q.before.p50_ms if q.before else None,
            "before_p95_ms": q.before.p95_ms if q.before else None,
            "after_p50_ms": q.after.p50_ms if q.after else None,
            "after_p95_ms": q.after.p95_ms if q.after else None,
            "runs_before": q.before.runs if q.before else None,
            "runs_after": q.after.runs if q.after else None,
        }
        for q in report.queries
    ]


def publish_rollback(database: str, result: Rollback) -> None:
    """The rollback's outcome as a markdown artifact keyed by the database."""
    create_markdown_artifact(
        key=f"liteshift-rollback-{db_key(database)}",
        markdown=(
            f"# Rollback of `{database}`\n\n- Path: **{result.path}**\n"
            f"- Action: {result.action}: {result.message}\n"
            + "".join(f"- Verified: {v}\n" for v in result.verified)
        ),
        description=f"Rollback of {Path(database).name}",
    )
