"""The health history: metric samples, alert states, claimed repairs and maintenance run times.

A SQLite file of its own, never the monitored database (measuring must not write there). Each
call opens its own short connection, so the flow, the CLI and a repair run can share the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from liteshift.core.db import connection, write_transaction

if TYPE_CHECKING:
    from liteshift.health.model import Finding, HealthReport

HISTORY_FILE = "health-history.db"
BUSY_TIMEOUT_MS = 5000
MIN_GROWTH_SPAN = timedelta(hours=1)  # a shorter span turns one burst of inserts into a yearly rate
SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    db_key TEXT NOT NULL, measured_at TEXT NOT NULL, metric TEXT NOT NULL, object TEXT NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_series ON samples (db_key, metric, object, measured_at);
CREATE TABLE IF NOT EXISTS states (
    db_key TEXT NOT NULL, metric TEXT NOT NULL, object TEXT NOT NULL, severity TEXT NOT NULL,
    since TEXT NOT NULL, PRIMARY KEY (db_key, metric, object)
);
CREATE TABLE IF NOT EXISTS claims (idempotency_key TEXT PRIMARY KEY, claimed_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    kind TEXT NOT NULL, db_key TEXT NOT NULL, seconds REAL NOT NULL, ok INTEGER NOT NULL, at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_kind ON runs (kind, db_key, at);
"""
Sample = tuple[str, str, float]  # (metric, object, value)


def history_path(report_dir: Path) -> Path:
    """Where the history lives unless told otherwise: REPORT_DIR/health-history.db."""
    return report_dir / HISTORY_FILE


def iso(moment: datetime) -> str:
    """A sortable UTC timestamp; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _event(before: str, after: str) -> str | None:
    """The alert a change of severity raises: breached, escalated, recovered, or none."""
    if before == "ok" and after in ("warning", "critical"):
        return "breached"
    if before == "warning" and after == "critical":
        return "escalated"
    if before in ("warning", "critical") and after == "ok":
        return "recovered"
    return None  # critical -> warning: the breach is still open, only its state is stored


def _slope_per_day(points: list[tuple[datetime, float]]) -> float:
    """Least-squares slope of value over time, per day: one noisy sample moves it less than first-to-last."""
    t0 = points[0][0]
    xs = [(t - t0).total_seconds() / 86400 for t, _ in points]
    ys = [v for _, v in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


class History:
    """Samples and alert states of every monitored database, in one SQLite file."""

    def __init__(self, path: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with connection(self.path, busy_timeout_ms) as con:
            con.execute("PRAGMA journal_mode = WAL")  # readers (a dashboard) never block a recording run
            con.executescript(SCHEMA)

    def add_samples(self, key: str, measured_at: datetime, samples: Iterable[Sample]) -> None:
        """Store metric samples of one measurement."""
        at = iso(measured_at)
        rows = [(key, at, metric, obj, float(value)) for metric, obj, value in samples]
        with (
            connection(self.path, self.busy_timeout_ms) as con,
            write_transaction(con, self.path, self.busy_timeout_ms),
        ):
            con.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?)", rows)

    def record(self, report: HealthReport) -> None:
        """Store every numeric figure of a health report as a sample."""
        self.add_samples(report.key, datetime.fromisoformat(report.measured_at), report.samples())

    def series(self, key: str, metric: str, object: str, since: datetime) -> list[tuple[datetime, float]]:
        """(measured_at, value) of one metric of one object since a moment, oldest first."""
        with connection(self.path, self.busy_timeout_ms) as con:
            rows = con.execute(
                "SELECT measured_at, value FROM samples WHERE db_key = ? AND metric = ? AND object = ? "
                "AND measured_at >= ? ORDER BY measured_at",
                (key, metric, object, iso(since)),
            ).fetchall()
        return [(datetime.fromisoformat(at), float(value)) for at, value in rows]

    def growth_per_day(
        self, key: str, now: datetime, days: float = 7, latest_bytes: int | None = None
    ) -> float | None:
        """Bytes per day the database grew over the last `days`, from its db_bytes samples.

        latest_bytes counts as one more sample at `now` (the measurement not yet recorded).
        None with fewer than 2 samples or when they span less than an hour.
        """
        points = [p for p in self.series(key, "db_bytes", key, now - timedelta(days=days)) if p[0] <= now]
        if latest_bytes is not None:
            points.append((now if now.tzinfo else now.replace(tzinfo=UTC), float(latest_bytes)))
        if len(points) < 2 or points[-1][0] - points[0][0] < MIN_GROWTH_SPAN:
            return None
        return _slope_per_day(points)

    def transitions(self, key: str, findings: list[Finding]) -> list[tuple[Finding, str]]:
        """Events for the findings whose severity changed since the last call, and store the new states.

        ok -> warning/critical: "breached"; warning -> critical: "escalated"; warning/critical ->
        ok: "recovered". critical -> warning is stored without an event. An object never seen
        counts as ok before. "unavailable" (nothing measured) changes nothing.
        """
        events: list[tuple[Finding, str]] = []
        now = iso(datetime.now(UTC))
        with (
            connection(self.path, self.busy_timeout_ms) as con,
            write_transaction(con, self.path, self.busy_timeout_ms),
        ):
            for f in findings:
                if f.severity == "unavailable":
                    continue
                row = con.execute(
                    "SELECT severity FROM states WHERE db_key = ? AND metric = ? AND object = ?",
                    (key, f.metric, f.object),
                ).fetchone()
                before = row[0] if row else "ok"
                if row is None or before != f.severity:
                    con.execute(
                        "INSERT OR REPLACE INTO states VALUES (?, ?, ?, ?, ?)",
                        (key, f.metric, f.object, f.severity, now),
                    )
                event = _event(before, f.severity)
                if event:
                    events.append((f, event))
        return events

    def claim(self, idempotency_key: str) -> bool:
        """True the first time a key is claimed, False ever after (for run-once repairs)."""
        with connection(self.path, self.busy_timeout_ms) as con:
            cur = con.execute(
                "INSERT OR IGNORE INTO claims VALUES (?, ?)", (idempotency_key, iso(datetime.now(UTC)))
            )
            return cur.rowcount == 1

    def record_run(self, kind: str, key: str, seconds: float, ok: bool, at: datetime | None = None) -> None:
        """Store how long a maintenance run (reindex, vacuum, ...) of a database took."""
        with connection(self.path, self.busy_timeout_ms) as con:
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?)",
                (kind, key, float(seconds), int(ok), iso(at or datetime.now(UTC))),
            )

    def last_run_seconds(self, kind: str, key: str) -> list[float]:
        """Durations of the earlier successful runs of that kind on that database, oldest first.

        Failed runs are left out: one that stopped early would make the next estimate too short.
        """
        with connection(self.path, self.busy_timeout_ms) as con:
            rows = con.execute(
                "SELECT seconds FROM runs WHERE kind = ? AND db_key = ? AND ok = 1 ORDER BY at", (kind, key)
            ).fetchall()
        return [float(r[0]) for r in rows]
