"""The `archive-rows` flow (the report's Phase 3): move old rows into an archive file, in batches.

The cutoff is a value (`before`) or relative to the run's date (`older_than`, e.g. "18 months"), so
a scheduled deployment keeps moving the rows as they age. Inside a maintenance window the run
stops between batches when the window closes and the next run resumes (liteshift.archive.move).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from liteshift.archive.move import ArchiveResult, plan_archive
from liteshift.archive.move import archive_rows as move_rows
from liteshift.core import guard, lock
from liteshift.core.errors import BadInput
from liteshift.core.names import db_key
from liteshift.core.window import closing
from liteshift.flows.concurrency import one_run_per_database
from liteshift.flows.runtime import is_deployment_run
from liteshift.flows.ui import progress, tag_run

OLDER_THAN_RE = re.compile(r"^\s*(?P<n>\d+)\s*(?P<unit>day|week|month|year)s?\s*$", re.I)


def _run_name() -> str:
    return f"archive-{Path(str(flow_run.parameters.get('database', 'db'))).name}"


def cutoff(older_than: str, today: date) -> str:
    """The ISO date `older_than` ("18 months", "90 days", "2 years") before today."""
    m = OLDER_THAN_RE.match(older_than)
    if not m:
        raise BadInput(
            f"Invalid older_than {older_than!r}",
            "it does not read as a number and a unit",
            "write it as N days, N weeks, N months or N years, for example '18 months'",
        )
    n, unit = int(m.group("n")), m.group("unit").lower()
    if unit in ("day", "week"):
        return date.fromordinal(today.toordinal() - n * (7 if unit == "week" else 1)).isoformat()
    months = today.year * 12 + today.month - 1 - n * (12 if unit == "year" else 1)
    year, month = divmod(months, 12)
    day = min(today.day, _days_in(year, month + 1))
    return date(year, month + 1, day).isoformat()


def _days_in(year: int, month: int) -> int:
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    return (nxt - date(year, month, 1)).days


def window_deadline(text: str | None, now: datetime) -> float | None:
    """The unix time the window closes (None without a window); refuses outside it."""
    return closing(text, now).timestamp() if text else None


move = task(name="archive-batches", cache_policy=NO_CACHE)(move_rows)
plan = task(name="plan-archive", cache_policy=NO_CACHE)(plan_archive)


@flow(name="archive-rows", flow_run_name=_run_name, log_prints=False)
def archive_rows(
    database: str,
    archive: str,
    table: str,
    column: str,
    before: str | None = None,
    older_than: str | None = None,
    maintenance_window: str | None = None,
    busy_timeout_ms: int = 5000,
    budget_s: float = 0.005,
    wal_limit_mb: float = 256.0,
) -> ArchiveResult:
    """Move the rows with column < cutoff into archive; stop at the window's end."""
    db = Path(database)
    if (before is None) == (older_than is None):
        raise BadInput(
            "Give the cutoff once", "pass either before or older_than", "for example older_than='18 months'"
        )
    now = datetime.now(UTC)
    value = before if before is not None else cutoff(str(older_than), now.date())
    if is_deployment_run():  # both files are written
        roots = guard.allowed_roots()
        guard.require_under(db, "database", roots)
        guard.require_under(archive, "archive", roots)
    tag_run(db)
    deadline = window_deadline(maintenance_window, now)
    planned = plan(db, table, column, value)
    get_run_logger().info("Archiving %s: %s", db, planned.as_dict())
    with one_run_per_database(db, 600.0, busy_timeout_ms), lock.held(db, busy_timeout_ms):
        result = move(
            db,
            Path(archive),
            table,
            column,
            value,
            timeout_ms=busy_timeout_ms,
            budget_s=budget_s,
            wal_limit_mb=wal_limit_mb,
            deadline=deadline,
            on_progress=progress(db, "archive"),
        )
    create_markdown_artifact(
        key=f"liteshift-archive-{db_key(db)}", markdown=render(result), description=f"Archiving of {db.name}"
    )
    return result


def render(r: ArchiveResult) -> str:
    """The archiving run as markdown."""
    state = "stopped at the window's end (the next run resumes)" if r.stopped_early else "done"
    return (
        f"# Archiving `{r.table}` where `{r.column}` < `{r.before}`: {state}\n\n"
        f"- Moved to `{r.archive}`: {r.deleted:,} rows ({r.copied:,} copied) in {r.batches} batches, "
        f"{r.seconds:.1f} s; longest write transaction {r.longest_txn_seconds * 1000:.1f} ms\n"
        f"- Kept (changed after their copy, moved next time): {r.kept_changed:,}; "
        f"still to move: {r.remaining:,}\n"
        f"- Verified on both sides (counts and digest {r.digest[:16]}): {'yes' if r.verified else 'NO'}\n"
        f"- Free pages reclaimed: {r.freed_bytes / 1e6:.1f} MB\n"
    )
