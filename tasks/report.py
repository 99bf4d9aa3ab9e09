"""The execution report: measured figures only, as markdown (artifact and file) and JSON.

The report keeps the steps' typed results; the renderers read them as they are.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from liteshift.core.names import db_key
from liteshift.rebuild.schema import RebuildStats
from liteshift.tasks.backup import Backup
from liteshift.tasks.integrity import Integrity
from liteshift.tasks.query_plan import QueryResult, Timing
from liteshift.tasks.rollback import Rollback
from liteshift.tasks.verify_indexes import IndexReport

RunStatus = Literal["running", "completed", "failed", "refused", "nothing-to-do"]


StepState = Literal["passed", "failed", "skipped"]


@dataclass
class StepRecord:
    """One step as the report shows it."""

    name: str
    state: StepState
    seconds: float
    detail: str = ""


@dataclass
class RunReport:
    """Everything one run measured, filled in step by step."""

    database: str
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    status: RunStatus = "running"
    flow_run_id: str | None = None
    pending: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    size_before: int | None = None
    size_after: int | None = None
    free_after: int | None = None  # bytes of free pages after the run (a rebuilt table's old copy)
    backup: Backup | None = None
    seconds_to_lock: float | None = None  # from the run's start to the migration's write lock
    lock_seconds: float | None = None
    lock_wait_seconds: float | None = None
    checkpoint_seconds: float | None = None
    journal_mode: str | None = None
    indexes: list[IndexReport] = field(default_factory=list)
    index_bytes: dict[str, int] = field(default_factory=dict)
    integrity: Integrity | None = None
    queries: list[QueryResult] = field(default_factory=list)
    rebuilds: list[RebuildStats] = field(default_factory=list)
    rollback: Rollback | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    report_path: str | None = None
    t0: float = field(default_factory=time.perf_counter, repr=False)  # perf_counter at the start

    def record(self, name: str, state: StepState, seconds: float, detail: str = "") -> None:
        self.steps.append(StepRecord(name, state, round(seconds, 4), detail))

    @property
    def key(self) -> str:
        return db_key(self.database)

    @property
    def growth_pct(self) -> float | None:
        if not self.size_before or self.size_after is None:
            return None
        return 100.0 * (self.size_after - self.size_before) / self.size_before

    def free_note(self) -> str:
        return "the old copy of each rebuilt table; later writes reuse them, VACUUM returns them to the disk"

    @property
    def total_seconds(self) -> float:
        return time.perf_counter() - self.t0

    def summary(self) -> dict[str, Any]:
        """The one JSON object `liteshift run --json` prints."""
        data = {k: v for k, v in asdict(self).items() if k != "t0"}
        if self.backup is not None:
            data["backup"]["counts"] = self.backup.counts
        data["growth_pct"] = None if self.growth_pct is None else round(self.growth_pct, 2)
        data["total_seconds"] = round(self.total_seconds, 3)
        return data

    def write(self, report_dir: Path) -> Path:
        """Write <db key>-<timestamp>.md and .json under report_dir; return the markdown path."""
        report_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S_%f")
        base = report_dir / f"{self.key}-{stamp}"
        md = base.with_suffix(".md")
        self.report_path = str(md)
        md.write_text(render_markdown(self), "utf-8")
        base.with_suffix(".json").write_text(json.dumps(self.summary(), indent=2), "utf-8")
        return md


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.2f} MB"


def _ms(t: Timing | None, which: Literal["p50", "p95"]) -> str:
    if t is None:
        return "—"
    return f"{t.p50_ms if which == 'p50' else t.p95_ms:.3f}"


def render_markdown(r: RunReport) -> str:
    """The report in the shape of the phase-1 execution report, with measured figures only."""
    ok = {"passed": "✅", "failed": "❌", "skipped": "⏭️"}
    lines = [
        f"# liteshift execution report: {Path(r.database).name}",
        "",
        f"- **Status**: {r.status.upper()}",
        f"- **Database**: `{r.database}` (journal mode {r.journal_mode or 'n/a'})",
        f"- **Started**: {r.started_at}; total {r.total_seconds:.2f} s",
        f"- **Migrations**: pending {', '.join(r.pending) or 'none'}; "
        f"applied {', '.join(r.applied) or 'none'}",
    ]
    if r.flow_run_id:
        lines.append(f"- **Flow run**: {r.flow_run_id}")
    if r.error:
        lines += ["", f"**Error**: {r.error}"]
    lines += ["", "## Steps", "", "| Step | Result | Seconds | Detail |", "|---|---|---|---|"]
    lines += [
        f"| {s.name} | {ok.get(s.state, s.state)} {s.state} | {s.seconds:.3f} | {s.detail} |" for s in r.steps
    ]
    lines += _backup_section(r.backup) + _migration_section(r)
    if r.indexes:
        lines += ["", "## Indexes", "", "| Index | Definition | Size |", "|---|---|---|"]
        lines += [f"| {i.name} | `{i.definition}` | {_mb(r.index_bytes.get(i.name))} |" for i in r.indexes]
    if r.integrity:
        g = r.integrity
        lines += [
            "",
            "## Integrity",
            "",
            f"- integrity_check of {', '.join(g.checked_tables)}: ok",
            f"- foreign key violations: {g.foreign_key_violations}",
            f"- rows changed by the migration: {g.rows_changed}",
        ]
        lines += [f"- {t}: {n:,} rows" for t, n in g.counts.items()]
    if r.queries:
        lines += _query_section(r.queries)
    lines += [
        "",
        "## Database size",
        "",
        f"- Before: {_mb(r.size_before)}; after: {_mb(r.size_after)}"
        + (f" (growth {r.growth_pct:+.1f}%)" if r.growth_pct is not None else ""),
    ]
    if r.free_after:
        lines.append(f"- Free pages after: {_mb(r.free_after)}: {r.free_note()}")
    if r.rollback:
        rb = r.rollback
        lines += ["", "## Rollback", "", f"- Path: {rb.path}", f"- Action: {rb.action}: {rb.message}"]
        if rb.lock_seconds:
            lines.append(
                f"- Write lock held: {rb.lock_seconds:.3f} s (proof checked in {rb.proof_seconds:.4f} s)"
            )
        lines += [f"- Verified: {v}" for v in rb.verified]
    if r.warnings:
        lines += ["", "## Warnings", ""] + [f"- ⚠️ {w}" for w in r.warnings]
    return "\n".join(lines) + "\n"


def _backup_section(b: Backup | None) -> list[str]:
    if b is None:
        return []
    return [
        "",
        "## Backup",
        "",
        f"- File: `{b.path}`",
        f"- Size: {_mb(b.bytes)}; copied in {b.seconds:.3f} s ({b.mb_per_s:.0f} MB/s); verified "
        f"(quick_check, rows per table) in {b.verify_seconds:.3f} s; fsync {b.sync_seconds:.3f} s",
    ]


def _migration_section(r: RunReport) -> list[str]:
    if r.lock_seconds is None:
        return []
    lines = [
        "",
        "## Migration",
        "",
        f"- Write lock held: {r.lock_seconds:.3f} s (waited {r.lock_wait_seconds or 0:.3f} s to get it)",
    ]
    if r.seconds_to_lock is not None:
        lines.append(f"- From the run's start to the write lock: {r.seconds_to_lock:.3f} s")
    if r.checkpoint_seconds is not None:
        lines.append(
            f"- WAL checkpoint after the commit: {r.checkpoint_seconds:.3f} s (writers are not blocked)"
        )
    if r.rebuilds:
        lines += [
            "",
            "| Rebuilt table | Mode | Rows copied | Batches | Copy s | Backlog at cut-over | Cut-over s "
            "| Longest write transaction s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {b.table} | {_rebuild_mode(b)} | {b.rows:,} | {b.batches} | {b.copy_seconds:.3f} "
            f"| {b.backlog_at_cutover} | {b.cutover_seconds:.3f} | {b.longest_txn_seconds:.3f} |"
            for b in r.rebuilds
        ]
        lines.append(
            "Cut-over: the part of the migration's write lock spent draining the backlog and swapping "
            "the tables. Blocking rebuilds copy inside the lock; online ones in short transactions before "
            "it. An index build copies the table into a shadow that has the new indexes, then cuts over."
        )
    return lines


def _rebuild_mode(b: RebuildStats) -> str:
    """online / blocking, and what the shadow was for when it also carried new indexes."""
    if b.index_build:
        return f"online index build ({b.prebuilt_indexes} new)"
    extra = f", {b.prebuilt_indexes} new indexes prebuilt" if b.prebuilt_indexes else ""
    lock = f", {b.built_in_lock} built in the lock" if b.built_in_lock else ""
    return f"{b.mode}{extra}{lock}"


def _query_section(queries: list[QueryResult]) -> list[str]:
    lines = [
        "",
        "## Query plans and timings",
        "",
        "| Query | Index used | Equality | Range | Before p50 / p95 ms | After p50 / p95 ms "
        "| Runs (before/after) |",
        "|---|---|---|---|---|---|---|",
    ]
    for q in queries:
        b, a = q.before, q.after
        index = q.plan.index or "none (" + "; ".join(q.plan.detail) + ")"
        lines.append(
            f"| {q.name} | {index} | {', '.join(q.plan.equality) or '—'} | {', '.join(q.plan.range) or '—'} "
            f"| {_ms(b, 'p50')} / {_ms(b, 'p95')} | {_ms(a, 'p50')} / {_ms(a, 'p95')} "
            f"| {b.runs if b else 0} / {a.runs if a else 0} |"
        )
    batched = [q.name for q in queries for t in (q.before, q.after) if t is not None and t.batch > 1]
    if batched:
        lines += [
            "",
            "Runs count executions. Queries faster than 0.2 ms are timed in batches "
            f"({', '.join(dict.fromkeys(batched))}): their p50 / p95 are of per-batch means.",
        ]
    for q in queries:
        if q.suggestion:
            t, plan = q.suggestion_timing, q.suggestion_plan
            lines += [
                "",
                f"**Suggestion for {q.name}**: compare the range form "
                "(equivalent when the column holds ISO-8601 text without a time-zone offset):",
                "",
                f"```sql\n{q.suggestion}\n```",
                f"Plan: `{'; '.join(plan.detail if plan else [])}`; p50 {_ms(t, 'p50')} ms, "
                f"p95 {_ms(t, 'p95')} ms over {t.runs if t else 0} runs, against "
                f"{_ms(q.after, 'p50')} ms for the original.",
            ]
    return lines


def render_text(r: RunReport) -> str:
    """The run as the lines `liteshift run` prints: steps, what was applied, queries, the end."""
    lines: list[str] = []
    if r.status == "nothing-to-do":
        return f"Nothing to migrate: {r.database} is up to date. Report: {r.report_path}\n"
    for step in r.steps if len(r.steps) > 1 else []:
        mark = {"passed": "ok", "failed": "FAILED"}.get(step.state, step.state)
        lines.append(f"  {step.name:<22} {mark:<7} {step.seconds:8.3f} s  {step.detail}")
    if r.applied and r.lock_seconds is not None:
        lines.append(f"Applied: {', '.join(r.applied)} (write lock held {r.lock_seconds:.3f} s)")
    for q in r.queries:
        before = f"{q.before.p50_ms:.3f} ms" if q.before else "—"
        after = f"{q.after.p50_ms:.3f} ms" if q.after else "—"
        lines.append(f"  {q.name:<28} {q.plan.index or 'no index'}: p50 {before} -> {after}")
    for w in r.warnings:
        lines.append(f"Warning: {w}")
    if r.rollback:
        lines.append(f"Rollback: {r.rollback.action}: {r.rollback.message}")
    if r.growth_pct is not None and r.size_before and r.size_after:
        mb_before, mb_after = r.size_before / 1e6, r.size_after / 1e6
        lines.append(f"Database size: {mb_before:.1f} MB -> {mb_after:.1f} MB ({r.growth_pct:+.1f}%)")
        if r.free_after:
            lines.append(f"  of which {r.free_after / 1e6:.1f} MB are free pages: {r.free_note()}")
    lines.append(f"Status: {r.status}. Report: {r.report_path}")
    return "".join(f"{line}\n" for line in lines)
