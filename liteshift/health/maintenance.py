"""Repairs the health flow calls for, through the same safe path as a migration.

One action per run: ANALYZE (drifted statistics), REINDEX (an index with too much unused space),
or reclaiming free pages (incremental vacuum, or a full VACUUM with approval). The run checks the
window and whether its predicted duration fits it, backs up, acts, verifies, and undoes the
action when the verification fails:

- ANALYZE, REINDEX and incremental vacuum are transactional: the action and its verification run
  in one BEGIN IMMEDIATE transaction, so a failed check is a ROLLBACK that loses nothing.
- VACUUM cannot run inside a transaction. It changes no row; when its verification fails, the
  backup is restored only if no other connection committed since (`PRAGMA data_version`).
"""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from liteshift.core import faults
from liteshift.core.db import (
    backup_pages,
    begin_immediate,
    check_is_sqlite_file,
    connection,
    pragma_check,
    table_exists,
)
from liteshift.core.errors import BadInput, CheckFailed, RollbackRefused
from liteshift.core.indexes import index_definition
from liteshift.core.migrations import Query
from liteshift.core.sql import quote_ident
from liteshift.core.window import check_fits, enforce_window

Action = Literal["analyze", "reindex", "vacuum"]
ACTIONS: tuple[str, ...] = ("analyze", "reindex", "vacuum")
# A declared query counts as slower after the action when its median grew by this factor and by
# more than SLOWER_MIN_MS: below that, two medians of the same plan differ by noise alone.
SLOWER_FACTOR = 1.5
SLOWER_MIN_MS = 1.0


@dataclass
class Maintenance:
    """What one maintenance run did and measured."""

    database: str
    action: str
    objects: list[str]
    status: Literal["completed", "rolled-back", "nothing-to-do"] = "completed"
    mode: str = ""  # "transaction", "incremental", "vacuum"
    prediction: str = ""
    backup_path: str | None = None
    seconds: float = 0.0
    lock_seconds: float = 0.0
    freed_bytes: int = 0
    verified: list[str] = field(default_factory=list)
    queries: dict[str, tuple[float, float]] = field(default_factory=dict)  # name: (before, after) ms
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Before:
    """What the verification compares with: index definitions and declared queries' medians."""

    definitions: dict[str, str]
    medians: dict[str, float]


@dataclass(frozen=True)
class Request:
    """One maintenance action, as asked for."""

    database: Path
    action: Action
    objects: tuple[str, ...] = ()  # tables/indexes; empty: ANALYZE all, or the whole file
    approve_vacuum: bool = False
    maintenance_window: str | None = None
    busy_timeout_ms: int = 5000
    queries: tuple[Query, ...] = ()  # the declared queries that must not get slower
    query_budget_s: float = 0.3


def check_request(req: Request) -> None:
    """Refuse what cannot or must not run, before anything is taken or written."""
    check_is_sqlite_file(req.database)
    if req.action not in ACTIONS:
        raise BadInput(
            f"Unknown maintenance action {req.action!r}",
            f"liteshift maintain knows {', '.join(ACTIONS)}",
            "pass --action analyze, reindex or vacuum",
        )
    with connection(req.database, req.busy_timeout_ms) as con:
        for name in req.objects:
            kind = _kind(con, name)
            allowed = {"analyze": ("table", "index"), "reindex": ("table", "index"), "vacuum": ()}
            if kind not in allowed[req.action]:
                raise BadInput(
                    f"Cannot {req.action} {name!r} in {req.database}",
                    f"it is {'not a table or index there' if kind is None else 'a ' + kind}"
                    if req.action != "vacuum"
                    else "vacuum works on the whole file, not on one object",
                    "pass --object with a table or index name"
                    if req.action != "vacuum"
                    else "run it without --object",
                )
        if req.action == "vacuum" and _auto_vacuum(con) != 2 and not req.approve_vacuum:
            raise BadInput(
                f"VACUUM of {req.database} needs approval",
                "auto_vacuum is not INCREMENTAL, so free pages come back only by a full VACUUM, "
                "which blocks every writer for its whole length and needs up to twice the file's "
                "size in free disk space",
                "run it in a maintenance window with --approve-vacuum",
            )


def _kind(con: sqlite3.Connection, name: str) -> str | None:
    row = con.execute(
        "SELECT type FROM sqlite_schema WHERE lower(name) = lower(?) AND type IN ('table', 'index')", (name,)
    ).fetchone()
    return str(row[0]) if row else None


def _auto_vacuum(con: sqlite3.Connection) -> int:
    return int(con.execute("PRAGMA auto_vacuum").fetchone()[0])


def predict(req: Request, earlier_s: list[float]) -> tuple[float | None, str]:
    """The run's duration: the median of earlier runs of this action here, else (for VACUUM,
    the one that blocks writers longest) a rehearsal: VACUUM INTO a temporary copy, timed."""
    if earlier_s:
        return statistics.median(earlier_s), f"median of {len(earlier_s)} earlier run(s)"
    if req.action != "vacuum":
        return None, "no earlier run of this action on this database"
    with tempfile.TemporaryDirectory(prefix="liteshift-vacuum-", dir=req.database.parent) as tmp:
        target = Path(tmp) / "rehearsal.db"
        start = time.perf_counter()
        with connection(req.database, req.busy_timeout_ms) as con:
            con.execute("VACUUM INTO ?", (str(target),))  # a read transaction only
        return time.perf_counter() - start, "rehearsal: VACUUM INTO a copy"


def check_space(req: Request) -> None:
    """A full VACUUM writes a new copy of the file beside it (and through the WAL): ask for 2x."""
    if req.action != "vacuum":
        return
    size = req.database.stat().st_size
    free = shutil.disk_usage(req.database.parent).free
    if free < 2 * size:
        raise BadInput(
            f"Not enough free disk space to VACUUM {req.database}",
            f"{free / 1e6:.0f} MB free, {2 * size / 1e6:.0f} MB needed (twice the file)",
            "free disk space and run again; nothing was written",
        )


def window_check(req: Request, earlier_s: list[float]) -> str:
    """Inside the window, and the predicted duration ends before it closes."""
    enforce_window(req.maintenance_window)
    if not req.maintenance_window:
        return "no maintenance window configured"
    predicted, basis = predict(req, earlier_s)
    return check_fits(req.maintenance_window, predicted, basis)


def act(req: Request, backup_path: str | None, on_step: Callable[[str], None] | None = None) -> Maintenance:
    """Run the action and verify it; undo it when the verification fails."""
    result = Maintenance(str(req.database), req.action, list(req.objects), backup_path=backup_path)
    start = time.perf_counter()
    with connection(req.database, req.busy_timeout_ms) as con:
        before = Before(
            _definitions(con), {q.name: _median_ms(con, q.sql, req.query_budget_s) for q in req.queries}
        )
        free_before = _free_bytes(con)
        if req.action == "vacuum" and _auto_vacuum(con) != 2:
            _vacuum(con, req, result, before)
        else:
            _in_transaction(con, req, result, before)
        result.freed_bytes = max(0, free_before - _free_bytes(con))
    result.seconds = time.perf_counter() - start
    return result


def _in_transaction(
    con: sqlite3.Connection,
    req: Request,
    result: Maintenance,
    before: Before,
) -> None:
    result.mode = "incremental" if req.action == "vacuum" else "transaction"
    begin_immediate(con, req.database, req.busy_timeout_ms)
    locked = time.perf_counter()
    try:
        _run_action(con, req)
        faults.point("maintenance-acted")
        _verify(con, req, result, before)
    except CheckFailed as exc:
        con.execute("ROLLBACK")
        result.status, result.message = "rolled-back", f"{exc}; the action was rolled back, nothing changed"
        result.lock_seconds = time.perf_counter() - locked
        return
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    result.lock_seconds = time.perf_counter() - locked
    result.message = f"{req.action} {', '.join(req.objects) or 'all'}: verified and committed"


def _run_action(con: sqlite3.Connection, req: Request) -> None:
    if req.action == "analyze":
        for name in req.objects or ("",):
            con.execute(f"ANALYZE {quote_ident(name)}" if name else "ANALYZE")
    elif req.action == "reindex":
        for name in req.objects:
            con.execute(f"REINDEX {quote_ident(name)}")
    else:
        # One call frees one page when stepped from Python: repeat until the freelist is empty.
        while con.execute("PRAGMA freelist_count").fetchone()[0]:
            before = con.execute("PRAGMA freelist_count").fetchone()[0]
            con.execute("PRAGMA incremental_vacuum(1000)").fetchall()
            if con.execute("PRAGMA freelist_count").fetchone()[0] >= before:
                break


def _vacuum(
    con: sqlite3.Connection,
    req: Request,
    result: Maintenance,
    before: Before,
) -> None:
    result.mode = "vacuum"
    start = time.perf_counter()
    con.execute("VACUUM")
    result.lock_seconds = time.perf_counter() - start
    seen = con.execute("PRAGMA data_version").fetchone()[0]
    faults.point("maintenance-acted")
    try:
        _verify(con, req, result, before)
    except CheckFailed as exc:
        _restore_if_untouched(con, req, result, seen, exc)
        return
    result.message = "VACUUM: verified"


def _restore_if_untouched(
    con: sqlite3.Connection, req: Request, result: Maintenance, seen: int, exc: CheckFailed
) -> None:
    """VACUUM changed no row: restore the backup only while no other connection has written."""
    if result.backup_path is None or con.execute("PRAGMA data_version").fetchone()[0] != seen:
        raise RollbackRefused(
            f"{exc.what}, and the VACUUM cannot be undone",
            f"{exc.why}; other writes were committed after it, which a restore of the backup would discard",
            f"keep the database as it is and check it; the backup is {result.backup_path}",
        ) from exc
    with connection(result.backup_path, req.busy_timeout_ms) as src:
        backup_pages(src, con)
    result.status = "rolled-back"
    result.message = f"{exc}; the backup {result.backup_path} was restored (no write since the VACUUM)"


def _verify(
    con: sqlite3.Connection,
    req: Request,
    result: Maintenance,
    before: Before,
) -> None:
    """Integrity of what was touched, index definitions unchanged, declared queries not slower."""
    if req.action == "vacuum":
        problems = pragma_check(con, "quick_check")
        if problems:
            raise CheckFailed(f"quick_check failed after {req.action}", problems[0])
        result.verified.append("quick_check: ok")
    for table in _touched_tables(con, req):
        problems = pragma_check(con, "integrity_check", table)
        if problems:
            raise CheckFailed(f"integrity_check({table}) failed after {req.action}", problems[0])
        result.verified.append(f"integrity_check({table}): ok")
    if _definitions(con) != before.definitions:
        raise CheckFailed(f"Index definitions changed during {req.action}", "they must not")
    result.verified.append(f"{len(before.definitions)} index definitions unchanged")
    for q in req.queries:
        after = _median_ms(con, q.sql, req.query_budget_s)
        was = before.medians[q.name]
        result.queries[q.name] = (round(was, 4), round(after, 4))
        if after > was * SLOWER_FACTOR and after - was > SLOWER_MIN_MS:
            raise CheckFailed(
                f"Query {q.name} got slower after {req.action}",
                f"median {was:.3f} ms before, {after:.3f} ms after",
            )
    if req.queries:
        result.verified.append(f"{len(req.queries)} declared queries not slower")


def _touched_tables(con: sqlite3.Connection, req: Request) -> list[str]:
    if req.action == "vacuum" or not req.objects:
        return []  # the whole file: quick_check below stands for it
    tables = []
    for name in req.objects:
        row = con.execute(
            "SELECT tbl_name FROM sqlite_schema WHERE lower(name) = lower(?)", (name,)
        ).fetchone()
        if row and table_exists(con, row[0]) and row[0] not in tables:
            tables.append(str(row[0]))
    return tables


def _definitions(con: sqlite3.Connection) -> dict[str, str]:
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")]
    return {n: d.describe() for n in names if (d := index_definition(con, n)) is not None}


def _median_ms(con: sqlite3.Connection, sql: str, budget_s: float) -> float:
    """Median of at least 5 timed runs of a declared query within about budget_s."""
    text = sql.strip().rstrip(";")
    con.execute(text).fetchall()  # warm-up
    samples: list[float] = []
    end = time.perf_counter() + budget_s
    while len(samples) < 5 or (time.perf_counter() < end and len(samples) < 200):
        start = time.perf_counter()
        con.execute(text).fetchall()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _free_bytes(con: sqlite3.Connection) -> int:
    page = con.execute("PRAGMA page_size").fetchone()[0]
    return int(con.execute("PRAGMA freelist_count").fetchone()[0]) * int(page)
