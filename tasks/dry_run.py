"""The dry run: rehearse the pending migrations on a copy and report what would change.

The copy is made with SQLite's backup API into a temporary directory beside the backups, the
real migrate step runs on it (so the write-lock time is measured, not guessed), and the copy is
deleted. The database itself is only read.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from liteshift.core.config import RunConfig
from liteshift.core.db import connection, copy_to_new_file, measure_sizes
from liteshift.core.errors import BadInput, ErrorOutcome, MigrationError
from liteshift.core.migrations import Query, load_migrations
from liteshift.core.plans import explain
from liteshift.tasks.migrate import apply_migrations
from liteshift.tasks.validate import validate_database


class DryRunFailed(BadInput):
    """The pending migrations fail on a copy of the database; the database was not written."""

    outcome: ClassVar[ErrorOutcome] = "failed"


@dataclass
class QueryChange:
    """One declared query's plan before and after the rehearsal."""

    name: str
    expect_index: str | None
    before: str
    after: str
    index_after: str | None

    @property
    def uses_expected(self) -> bool:
        return self.expect_index is None or self.index_after == self.expect_index


@dataclass
class DryRun:
    """What applying the pending migrations would do, measured on a copy."""

    database: str
    pending: list[str]
    statements: dict[str, list[str]] = field(default_factory=dict)
    indexes: dict[str, str] = field(default_factory=dict)
    copy_seconds: float = 0.0
    apply_seconds: float = 0.0  # the migrate step on the copy, from start to COMMIT and after
    lock_seconds: float | None = None
    size_before: int = 0
    size_after: int | None = None
    index_bytes: dict[str, int] = field(default_factory=dict)
    queries: list[QueryChange] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    rebuilds: list[str] = field(default_factory=list)
    undo: dict[str, str] = field(default_factory=dict)  # label -> down-section, derived or backup

    @property
    def growth_pct(self) -> float | None:
        if not self.size_before or self.size_after is None:
            return None
        return 100.0 * (self.size_after - self.size_before) / self.size_before

    def summary(self) -> dict[str, Any]:
        """The JSON object `liteshift plan --json` prints."""
        growth = self.growth_pct
        return {
            "database": self.database,
            "pending": self.pending,
            "statements": self.statements,
            "rebuilds": self.rebuilds,
            "indexes": self.indexes,
            "copy_seconds": round(self.copy_seconds, 4),
            "apply_seconds": round(self.apply_seconds, 4),
            "lock_seconds": None if self.lock_seconds is None else round(self.lock_seconds, 4),
            "size_before": self.size_before,
            "size_after": self.size_after,
            "index_bytes": self.index_bytes,
            "growth_pct": None if growth is None else round(growth, 2),
            "queries": [{**q.__dict__, "uses_expected": q.uses_expected} for q in self.queries],
            "warnings": self.warnings,
            "error": self.error,
            "undo": self.undo,
        }


def _plans(path: Path, queries: list[Query]) -> dict[str, tuple[str, str | None]]:
    """Query plan text and index of each query, read-only."""
    with connection(path, readonly=True) as con:
        return {q.name: _one_plan(con, q) for q in queries}


def _one_plan(con: sqlite3.Connection, q: Query) -> tuple[str, str | None]:
    plan = explain(con, q.sql)
    return "; ".join(plan.detail), plan.index


def _copy(database: Path, target: Path, busy_timeout_ms: int) -> float:
    """Copy the live database with the backup API (one step); return the seconds it took."""
    start = time.perf_counter()
    with connection(database, busy_timeout_ms) as src:
        copy_to_new_file(src, target)
    return time.perf_counter() - start


def dry_run(cfg: RunConfig) -> DryRun:
    """Validate, then apply the pending migrations to a copy and measure what changes."""
    v = validate_database(cfg)
    result = DryRun(
        str(cfg.database), v.pending, size_before=v.size_bytes, warnings=list(v.warnings), undo=v.undo
    )
    if not v.pending:
        return result
    todo = [m for m in load_migrations(cfg.migrations_dir) if m.label in v.pending]
    result.statements = {
        m.label: [
            s if isinstance(s, str) else f"-- migrate:rebuild {s.table}\n{s.create_sql}" for s in m.steps
        ]
        for m in todo
    }
    result.indexes = {name: d.describe() for name, d in v.indexes.items()}
    queries = [q for m in todo for q in m.queries]
    before = _plans(cfg.database, queries)
    with tempfile.TemporaryDirectory(prefix="liteshift-plan-", dir=cfg.backup_directory) as tmp:
        copy = Path(tmp) / cfg.database.name
        result.copy_seconds = _copy(cfg.database, copy, cfg.busy_timeout_ms)
        start = time.perf_counter()
        try:
            applied = apply_migrations(cfg.model_copy(update={"database": copy}))
            result.apply_seconds = time.perf_counter() - start
        except MigrationError as exc:
            result.error = exc.one_line()
            return result
        result.lock_seconds = applied.lock_seconds
        result.rebuilds = [
            f"{r.table} ({'online, for its new indexes' if r.index_build else r.mode}): {r.rows:,} rows "
            f"copied, cut-over {r.cutover_seconds:.3f} s"
            for r in applied.rebuilds
        ]
        after = _plans(copy, queries)
        result.size_after, result.index_bytes = measure_sizes(copy, list(v.indexes))
    result.queries = [
        QueryChange(q.name, q.expect_index, before[q.name][0], after[q.name][0], after[q.name][1])
        for q in queries
    ]
    return result


def dry_run_or_refuse(cfg: RunConfig) -> DryRun:
    """The dry run, refusing at once when it fails: no one should be asked to approve a failure."""
    result = dry_run(cfg)
    if result.error:
        raise DryRunFailed(
            f"The pending migrations of {cfg.database} fail on a copy",
            result.error,
            "fix the migration or the data; nothing was written and no approval was asked",
        )
    return result


UNDO_WORDS = {
    "down-section": "its down section",
    "derived": "its derived down (the inverse of each step; every write since is kept)",
    "backup": "only the backup: a rollback restores what it changed, and refuses if the application "
    "wrote to those tables since",
}


def render_plan(d: DryRun) -> str:
    """The dry run as markdown: the approval form's description and `liteshift plan`'s output."""
    name = Path(d.database).name
    if not d.pending:
        return f"# Dry run for {name}\n\nNothing to migrate: every migration is applied.\n"
    lines = [f"# Dry run for {name}", "", f"- **Pending**: {', '.join(d.pending)}"]
    if d.error:
        lines += [f"- **Would FAIL**: {d.error}"]
    if d.lock_seconds is not None:
        lines.append(
            f"- **Write lock**: held {d.lock_seconds:.3f} s on a copy (copied in {d.copy_seconds:.3f} s); "
            "expect about this on the live file, longer when it is busy or not cached"
        )
    if d.size_after is not None:
        lines.append(
            f"- **Size**: {d.size_before / 1e6:.2f} MB -> {d.size_after / 1e6:.2f} MB "
            f"(growth {d.growth_pct or 0:+.1f}%; free pages left by earlier deletes are reused first)"
        )
    lines += [
        f"- **Creates index** {n}: `{desc}`"
        + (f" ({d.index_bytes[n] / 1e6:.2f} MB)" if n in d.index_bytes else "")
        for n, desc in d.indexes.items()
    ]
    lines += [f"- **Rebuilds** {r} on the copy" for r in d.rebuilds]
    lines += [f"- **Undo** of {label}: {UNDO_WORDS[kind]}" for label, kind in d.undo.items()]
    lines += [f"- ⚠️ {w}" for w in d.warnings]
    for label, stmts in d.statements.items():
        lines += ["", f"## {label}", "", "```sql", *[s + ";" for s in stmts], "```"]
    if d.queries:
        lines += [
            "",
            "## Query plans",
            "",
            "| Query | Before | After | Expected index |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {q.name} | {q.before} | {q.after} | {q.expect_index or '—'} "
            f"{'✅' if q.uses_expected else '❌ not used'} |"
            for q in d.queries
        ]
    return "\n".join(lines) + "\n"
