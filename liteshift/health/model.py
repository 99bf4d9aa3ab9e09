"""What a health check finds: the measured report and the judged findings, as typed records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from liteshift.health.history import Sample


Severity = Literal["ok", "warning", "critical", "unavailable"]


Action = Literal["analyze", "reindex", "vacuum", "archive", "investigate"]


@dataclass
class Finding:
    """One judged figure: what, of which object, its value against its threshold, and what to do."""

    metric: str
    object: str
    value: float | str | None
    threshold: float | str | None
    severity: Severity
    action: Action | None
    message: str


@dataclass
class IndexHealth:
    """An index's size and unused share from dbstat (None: dbstat is not available)."""

    name: str
    table: str
    bytes: int | None
    unused_pct: float | None


@dataclass
class QueryHealth:
    """A declared query of an applied migration: its timings and plan now, and its baseline."""

    name: str
    migration: str
    expect_index: str | None
    runs: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    plan: list[str] = field(default_factory=list)
    plan_problem: str | None = None
    baseline_p95_ms: float | None = None  # "after" p95 of the migration's own latest completed run
    error: str | None = None  # the query failed (a table or column gone)


@dataclass
class StatsHealth:
    """A table's row count against the planner's estimate, and its indexes without statistics."""

    table: str
    rows: int
    stat_rows: int | None
    missing_indexes: list[str] = field(default_factory=list)


@dataclass
class HealthReport:
    """Everything one health measurement found, with the findings judged from it."""

    database: str
    key: str
    measured_at: str
    seconds: float = 0.0
    db_bytes: int = 0
    wal_bytes: int = 0
    shm_bytes: int = 0
    page_size: int = 0
    page_count: int = 0
    freelist_count: int = 0
    growth_bytes_per_day: float | None = None
    days_left: float | None = None
    indexes: list[IndexHealth] = field(default_factory=list)
    dbstat: bool = True  # False: this SQLite build has no dbstat, index bloat is unavailable
    queries: list[QueryHealth] = field(default_factory=list)
    stats: list[StatsHealth] = field(default_factory=list)
    stat1: bool = True  # False: the database has no sqlite_stat1 table at all
    quick_check: str | None = None
    failed_runs: int = 0
    total_runs: int = 0
    findings: list[Finding] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per measurement phase

    @property
    def freelist_pct(self) -> float:
        return 100.0 * self.freelist_count / self.page_count if self.page_count else 0.0

    @property
    def error_rate_pct(self) -> float | None:
        return 100.0 * self.failed_runs / self.total_runs if self.total_runs else None

    def breaches(self) -> list[Finding]:
        """Findings at warning or critical."""
        return [f for f in self.findings if f.severity in ("warning", "critical")]

    def as_dict(self) -> dict[str, Any]:
        """The JSON object `liteshift health --json` prints."""
        data = asdict(self)
        data["freelist_pct"] = round(self.freelist_pct, 3)
        data["error_rate_pct"] = self.error_rate_pct
        data["breaches"] = len(self.breaches())
        return data

    def samples(self) -> list[Sample]:
        """Every numeric figure as (metric, object, value), for the history."""
        k = self.key
        rows: list[tuple[str, str, float | int | None]] = [
            ("db_bytes", k, self.db_bytes),
            ("wal_bytes", k, self.wal_bytes),
            ("shm_bytes", k, self.shm_bytes),
            ("page_count", k, self.page_count),
            ("freelist_count", k, self.freelist_count),
            ("freelist_pct", k, self.freelist_pct),
            ("growth_bytes_per_day", k, self.growth_bytes_per_day),
            ("days_left", k, self.days_left),
            ("error_rate_pct", k, self.error_rate_pct),
            ("measure_seconds", k, self.seconds),
        ]
        for i in self.indexes:
            rows += [("index_bytes", i.name, i.bytes), ("index_unused_pct", i.name, i.unused_pct)]
        for q in self.queries:
            rows += [(f"query_{p}_ms", q.name, getattr(q, f"{p}_ms")) for p in ("p50", "p95", "p99", "max")]
        for s in self.stats:
            rows.append(("table_rows", s.table, s.rows))
        if self.quick_check is not None:  # 1 ok, 0 damaged; its presence says when one last ran
            rows.append(("quick_check", k, float(self.quick_check == "ok")))
        return [(m, o, float(v)) for m, o, v in rows if v is not None]
