"""The execution report: measured figures only, as markdown (artifact and file) and JSON."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from liteshift.db import connection, page_bytes


def slug(text: str) -> str:
    """An artifact key from a database name: lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-") or "db"


@dataclass
class StepRecord:
    """One step as the report shows it."""

    name: str
    state: str  # passed | failed | skipped
    seconds: float
    detail: str = ""


@dataclass
class RunReport:
    """Everything one run measured, filled in step by step."""

    database: str
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    status: str = "running"
    flow_run_id: str | None = None
    pending: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    size_before: int | None = None
    size_after: int | None = None
    backup: dict[str, Any] | None = None
    lock_seconds: float | None = None
    lock_wait_seconds: float | None = None
    checkpoint_seconds: float | None = None
    journal_mode: str | None = None
    indexes: list[dict[str, Any]] = field(default_factory=list)
    index_bytes: dict[str, int] = field(default_factory=dict)
    integrity: dict[str, Any] | None = None
    queries: list[dict[str, Any]] = field(default_factory=list)
    rollback: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    report_path: str | None = None
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    def record(self, name: str, state: str, seconds: float, detail: str = "") -> None:
        self.steps.append(StepRecord(name, state, round(seconds, 4), detail))

    @property
    def growth_pct(self) -> float | None:
        if not self.size_before or self.size_after is None:
            return None
        return 100.0 * (self.size_after - self.size_before) / self.size_before

    @property
    def total_seconds(self) -> float:
        return time.perf_counter() - self._t0

    def summary(self) -> dict[str, Any]:
        """The one JSON object `liteshift run --json` prints."""
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        data["growth_pct"] = None if self.growth_pct is None else round(self.growth_pct, 2)
        data["total_seconds"] = round(self.total_seconds, 3)
        return data

    def write(self, report_dir: Path) -> Path:
        """Write <db>-<timestamp>.md and .json under report_dir; return the markdown path."""
        report_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S_%f")
        base = report_dir / f"{slug(Path(self.database).name)}-{stamp}"
        md = base.with_suffix(".md")
        self.report_path = str(md)
        md.write_text(render_markdown(self), "utf-8")
        base.with_suffix(".json").write_text(json.dumps(self.summary(), indent=2), "utf-8")
        return md


def measure_sizes(database: Path, names: list[str]) -> tuple[int, dict[str, int]]:
    """Logical size of the database and bytes per named index or table (dbstat)."""
    with connection(database) as con:
        total = page_bytes(con)
        sizes = {}
        for name in names:
            row = con.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ?", (name,)).fetchone()
            sizes[name] = int(row[0] or 0)
    return total, sizes


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.2f} MB"


def _ms(t: dict[str, Any] | None, key: str) -> str:
    return "—" if not t else f"{t[key]:.3f}"


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
    if r.backup:
        b = r.backup
        lines += [
            "",
            "## Backup",
            "",
            f"- File: `{b['path']}`",
            f"- Size: {_mb(b['bytes'])}; copied in {b['seconds']:.3f} s "
            f"({b['mb_per_s']:.0f} MB/s); verified (quick_check, rows per table) in "
            f"{b['verify_seconds']:.3f} s; fsync {b.get('sync_seconds', 0):.3f} s",
        ]
    if r.lock_seconds is not None:
        lines += [
            "",
            "## Migration",
            "",
            f"- Write lock held: {r.lock_seconds:.3f} s (waited {r.lock_wait_seconds or 0:.3f} s to get it)",
        ]
        if r.checkpoint_seconds is not None:
            lines.append(
                f"- WAL checkpoint after the commit: {r.checkpoint_seconds:.3f} s (writers are not blocked)"
            )
    if r.indexes:
        lines += ["", "## Indexes", "", "| Index | Definition | Size |", "|---|---|---|"]
        lines += [
            f"| {i['name']} | `{i['definition']}` | {_mb(r.index_bytes.get(i['name']))} |" for i in r.indexes
        ]
    if r.integrity:
        g = r.integrity
        lines += [
            "",
            "## Integrity",
            "",
            f"- integrity_check of {', '.join(g['checked_tables'])}: ok",
            f"- foreign key violations: {g['foreign_key_violations']}",
            f"- rows changed by the migration: {g['rows_changed']}",
        ]
        lines += [f"- {t}: {n:,} rows" for t, n in g["counts"].items()]
    if r.queries:
        lines += _query_section(r.queries)
    lines += [
        "",
        "## Database size",
        "",
        f"- Before: {_mb(r.size_before)}; after: {_mb(r.size_after)}"
        + (f" (growth {r.growth_pct:+.1f}%)" if r.growth_pct is not None else ""),
    ]
    if r.rollback:
        rb = r.rollback
        lines += ["", "## Rollback", "", f"- Action: {rb.get('action')}: {rb.get('message')}"]
        lines += [f"- Verified: {v}" for v in rb.get("verified", [])]
    if r.warnings:
        lines += ["", "## Warnings", ""] + [f"- ⚠️ {w}" for w in r.warnings]
    return "\n".join(lines) + "\n"


def _batched(timing: dict[str, Any] | None) -> bool:
    return bool(timing and timing.get("batch", 1) > 1)


def _query_section(queries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Query plans and timings",
        "",
        "| Query | Index used | Equality | Range | Before p50 / p95 ms | After p50 / p95 ms "
        "| Runs (before/after) |",
        "|---|---|---|---|---|---|---|",
    ]
    for q in queries:
        b, a = q.get("before"), q.get("after")
        runs = f"{b['runs'] if b else 0} / {a['runs'] if a else 0}"
        lines.append(
            f"| {q['name']} | {q['plan']['index'] or 'none (' + '; '.join(q['plan']['detail']) + ')'} "
            f"| {', '.join(q['plan']['equality']) or '—'} | {', '.join(q['plan']['range']) or '—'} "
            f"| {_ms(b, 'p50_ms')} / {_ms(b, 'p95_ms')} | {_ms(a, 'p50_ms')} / {_ms(a, 'p95_ms')} "
            f"| {runs} |"
        )
    batched = [q["name"] for q in queries for t in (q.get("before"), q.get("after")) if _batched(t)]
    if batched:
        lines += [
            "",
            "Runs count executions. Queries faster than 0.2 ms are timed in batches "
            f"({', '.join(dict.fromkeys(batched))}): their p50 / p95 are of per-batch means.",
        ]
    for q in queries:
        if q.get("suggestion"):
            t = q.get("suggestion_timing") or {}
            plan = q.get("suggestion_plan") or {}
            lines += [
                "",
                f"**Suggestion for {q['name']}**: compare the range form "
                "(equivalent when the column holds ISO-8601 text without a time-zone offset):",
                "",
                f"```sql\n{q['suggestion']}\n```",
                f"Plan: `{'; '.join(plan.get('detail', []))}`; p50 {_ms(t, 'p50_ms')} ms, "
                f"p95 {_ms(t, 'p95_ms')} ms over {t.get('runs', 0)} runs, against "
                f"{_ms(q.get('after'), 'p50_ms')} ms for the original.",
            ]
    return lines
