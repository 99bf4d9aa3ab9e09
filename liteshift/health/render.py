"""A health report as markdown (artifact and file) and as table rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from liteshift.health.model import HealthReport
from liteshift.health.thresholds import RUN_WINDOW

MARK = {"ok": "✅", "warning": "⚠️", "critical": "🛑", "unavailable": "❔"}


def _value(v: float | str | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.3f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def render_markdown(report: HealthReport, trend_png: str | Sequence[str] | None = None) -> str:
    """The health report as markdown (a Prefect artifact), measured figures only.

    trend_png: the path of a trend chart, or several, each linked.
    """
    r = report
    pngs = [trend_png] if isinstance(trend_png, str) else list(trend_png or [])
    breaches = r.breaches()
    lines = [
        f"# Database health: {Path(r.database).name}",
        "",
        f"- **Database**: `{r.database}` (key `{r.key}`)",
        f"- **Measured**: {r.measured_at} in {r.seconds:.2f} s; "
        f"{len(breaches)} breach(es) of {len(r.findings)} finding(s)",
        f"- **Size**: file {r.db_bytes / 1e6:.2f} MB, WAL {r.wal_bytes / 1e6:.2f} MB, "
        f"{r.page_count:,} pages of {r.page_size} B, {r.freelist_count:,} free ({r.freelist_pct:.1f}%)",
        "- **Growth**: "
        + (
            "unknown (too little history)"
            if r.growth_bytes_per_day is None
            else f"{r.growth_bytes_per_day / 1e6:+.2f} MB/day"
            + (f", {r.days_left:.1f} days to the size warning" if r.days_left is not None else "")
        ),
        f"- **liteshift runs, last {RUN_WINDOW.days} days**: {r.failed_runs} failed of {r.total_runs}",
        f"- **quick_check**: {r.quick_check or 'not run this time'}",
    ]
    if pngs:
        lines.append("- **Trend**: " + ", ".join(f"[{Path(p).name}]({p})" for p in pngs))
    lines += ["", "## Findings", "", "| | Metric | Object | Value | Threshold | Action | Message |"]
    lines.append("|---|---|---|---|---|---|---|")
    order = {"critical": 0, "warning": 1, "unavailable": 2, "ok": 3}
    for f in sorted(r.findings, key=lambda f: order[f.severity]):
        lines.append(
            f"| {MARK[f.severity]} {f.severity} | {f.metric} | {f.object} | {_value(f.value)} "
            f"| {_value(f.threshold)} | {f.action or '—'} | {f.message} |"
        )
    return "\n".join(lines + _index_section(r) + _query_section(r)) + "\n"


def _index_section(r: HealthReport) -> list[str]:
    if not r.indexes:
        return []
    lines = ["", "## Indexes", "", "| Index | Table | MB | Unused % |", "|---|---|---|---|"]
    for i in r.indexes:
        size = "—" if i.bytes is None else f"{i.bytes / 1e6:.2f}"
        lines.append(f"| {i.name} | {i.table} | {size} | {_ms(i.unused_pct)} |")
    return lines


def _query_section(r: HealthReport) -> list[str]:
    if not r.queries:
        return []
    lines = [
        "",
        "## Declared queries",
        "",
        "| Query | Migration | p50 / p95 / p99 / max ms | Runs | Baseline p95 ms | Plan |",
        "|---|---|---|---|---|---|",
    ]
    for q in r.queries:
        times = " / ".join(_ms(v) for v in (q.p50_ms, q.p95_ms, q.p99_ms, q.max_ms))
        plan = q.error or q.plan_problem or "; ".join(q.plan)
        lines.append(f"| {q.name} | {q.migration} | {times} | {q.runs} | {_ms(q.baseline_p95_ms)} | {plan} |")
    return lines


def table_rows(report: HealthReport) -> list[dict[str, Any]]:
    """One row per finding, breaches first (a Prefect table artifact)."""
    order = {"critical": 0, "warning": 1, "unavailable": 2, "ok": 3}
    return [
        {
            "severity": f.severity,
            "metric": f.metric,
            "object": f.object,
            "value": f.value,
            "threshold": f.threshold,
            "action": f.action,
            "message": f.message,
        }
        for f in sorted(report.findings, key=lambda f: order[f.severity])
    ]
