"""The database-health and database-maintenance flows on Prefect's test harness: one event per
change of state, the repair scheduled once per window, the maintenance run's refusals, and the
`liteshift health` / `maintain` commands."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import PROJECT_MIGRATIONS, snapshot

from liteshift.core.window import OutsideWindow, parse_window
from liteshift.flows import health as health_flow
from liteshift.flows.health import check_database_health
from liteshift.flows.maintenance import maintain_database

pytestmark = pytest.mark.usefixtures("prefect_harness")
INDEX = "idx_worklogs_company"
SMALL = {"index_min_bytes": 64 * 1024}  # the test databases' indexes are a few hundred KB


def _bloated(make_db: Any) -> Path:
    """50,000 worklogs with packed indexes, then 40% of the rows deleted at random."""
    db = make_db(50_000)
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("REINDEX")
    gone = random.Random(7).sample(range(1, 50_001), 20_000)
    con.execute("BEGIN")
    con.executemany("DELETE FROM worklogs WHERE id = ?", [(i,) for i in gone])
    con.execute("COMMIT")
    con.execute("ANALYZE")  # current statistics: the index's unused space is the only breach
    con.close()
    return db


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, str]]]:
    """The events the health flow emits, as (event, resource)."""
    seen: list[tuple[str, dict[str, str]]] = []
    monkeypatch.setattr(
        health_flow, "emit_event", lambda event, resource, payload: seen.append((event, resource))
    )
    return seen


def _health(db: Path, tmp_path: Path, **params: Any) -> Any:
    return check_database_health(
        database=str(db),
        migrations_dir=str(PROJECT_MIGRATIONS),
        report_dir=str(tmp_path / "reports"),
        thresholds=SMALL,
        **params,
    )


def test_one_event_per_breach_a_repair_and_a_recovery(make_db, tmp_path, events) -> None:
    db = _bloated(make_db)
    first = _health(db, tmp_path)
    assert [(f.metric, f.object, f.action) for f in first.breaches()] == [
        ("index_unused_pct", INDEX, "reindex")
    ]
    assert [(e, r["liteshift.metric"], r["liteshift.object"]) for e, r in events] == [
        ("liteshift.health.breached", "index_unused_pct", INDEX)
    ]
    _health(db, tmp_path)
    assert len(events) == 1  # the same breach seen again: no second event

    (tmp_path / "backups").mkdir()
    repaired = maintain_database(
        database=str(db),
        action="reindex",
        objects=[INDEX],
        migrations_dir=str(PROJECT_MIGRATIONS),
        report_dir=str(tmp_path / "reports"),
        backup_dir=str(tmp_path / "backups"),
    )
    assert repaired.status == "completed" and repaired.backup_path
    assert repaired.verified[0] == "integrity_check(worklogs): ok"
    after = _health(db, tmp_path)
    assert after.breaches() == []
    assert events[1][0] == "liteshift.health.recovered" and events[1][1]["liteshift.object"] == INDEX
    pngs = sorted((tmp_path / "reports" / "health").glob("*.png"))
    assert [p.name.rsplit("-", 1)[1] for p in pngs] == ["30d.png", "7d.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_the_repair_is_scheduled_at_the_next_window_once_per_key(
    make_db, tmp_path, events, monkeypatch
) -> None:
    db = _bloated(make_db)
    calls: list[dict[str, Any]] = []

    class Run:
        id = "run-1"

    def fake_run_deployment(name: str, **kw: Any) -> Run:
        calls.append({"name": name, **kw})
        return Run()

    monkeypatch.setattr("prefect.deployments.run_deployment", fake_run_deployment)
    window = "Sun 01:00-05:00 Europe/Berlin"
    for _ in range(2):
        _health(db, tmp_path, maintenance_window=window, maintenance_deployment="database-maintenance/repair")
    opening = parse_window(window).next_opening(datetime.now(UTC))
    assert [c["parameters"]["objects"] for c in calls] == [[INDEX], [INDEX]]
    assert calls[0]["name"] == "database-maintenance/repair" and calls[0]["scheduled_time"] == opening
    # Both runs ask with one idempotency key: the server keeps one flow run (tests/e2e proves it).
    assert calls[0]["idempotency_key"] == calls[1]["idempotency_key"]
    assert calls[0]["idempotency_key"].endswith(f":reindex:['{INDEX}']:{opening.isoformat()}")


def test_maintenance_outside_its_window_is_refused_and_writes_nothing(make_db, tmp_path) -> None:
    db = make_db()
    before = snapshot(db)
    hour = datetime.now(UTC).hour
    closed = f"daily {(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00 UTC"
    with pytest.raises(OutsideWindow, match=r"^Outside the maintenance window"):
        maintain_database(
            database=str(db), action="analyze", maintenance_window=closed, report_dir=str(tmp_path / "r")
        )
    assert snapshot(db) == before
    assert not list(tmp_path.glob("*.backup-*"))


LIMIT = ("--threshold", f"index_min_bytes={SMALL['index_min_bytes']}")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "liteshift.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_health_command_lists_findings_in_json_and_exits_3_on_a_warning(make_db, tmp_path) -> None:
    db = _bloated(make_db)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    done = _cli("health", "--database", str(db), "--report-dir", str(tmp_path / "r"), "--json", *LIMIT)
    assert done.returncode == 3, done.stderr
    data = json.loads(done.stdout)
    [breach] = [f for f in data["findings"] if f["severity"] in ("warning", "critical")]
    assert {k: breach[k] for k in ("metric", "object", "severity", "action", "threshold")} == {
        "metric": "index_unused_pct",
        "object": INDEX,
        "severity": "warning",
        "action": "reindex",
        "threshold": 15.0,
    }
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest


def test_maintain_command_refuses_an_unknown_index_with_exit_2(make_db, tmp_path) -> None:
    db = make_db()
    before = snapshot(db)
    done = _cli("maintain", "--database", str(db), "--action", "reindex", "--object", "idx_nope")
    assert done.returncode == 2
    assert done.stderr == (
        f"Error: Cannot reindex 'idx_nope' in {db}: it is not a table or index there\n"
        "Try: pass --object with a table or index name\n"
    )
    assert snapshot(db) == before


def test_older_than_is_a_date_before_the_runs_day() -> None:
    from datetime import date

    from liteshift.flows.archive import cutoff

    assert cutoff("18 months", date(2026, 11, 28)) == "2025-05-28"
    assert cutoff("1 month", date(2026, 3, 31)) == "2026-02-28"  # no Feb 31st: the month's last day
    assert cutoff("90 days", date(2026, 11, 28)) == "2026-08-30"
    assert cutoff("2 years", date(2028, 2, 29)) == "2026-02-28"


def test_archive_command_moves_the_old_rows_and_a_rerun_moves_nothing(make_db, tmp_path) -> None:
    db = make_db()
    con = sqlite3.connect(db)
    old = con.execute("SELECT count(*) FROM worklogs WHERE started < '2025-01-01'").fetchone()[0]
    total = con.execute("SELECT count(*) FROM worklogs").fetchone()[0]
    con.close()
    assert 0 < old < total
    arc = tmp_path / "archive.db"
    args = ("archive", "--database", str(db), "--archive", str(arc), "--table", "worklogs")
    done = _cli(*args, "--column", "started", "--before", "2025-01-01", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["deleted"], result["verified"], result["stopped_early"]) == (old, True, False)
    live, archived = sqlite3.connect(db), sqlite3.connect(arc)
    assert live.execute("SELECT count(*) FROM worklogs").fetchone()[0] == total - old
    assert archived.execute("SELECT count(*) FROM worklogs WHERE started < '2025-01-01'").fetchone()[0] == old
    live.close()
    archived.close()
    again = json.loads(_cli(*args, "--column", "started", "--before", "2025-01-01", "--json").stdout)
    assert again["deleted"] == 0


def test_the_table_artifact_rows_carry_the_7_and_30_day_range(tmp_path) -> None:
    from datetime import timedelta

    from liteshift.flows.health import with_trends
    from liteshift.health.history import History

    history = History(tmp_path / "h.db")
    now = datetime.now(UTC)
    samples = [(now - timedelta(days=20), 10.0), (now - timedelta(days=3), 30.0), (now, 20.0)]
    for at, value in samples:
        history.add_samples("db-1", at, [("index_unused_pct", "idx_a", value)])
    rows = with_trends(
        [{"metric": "index_unused_pct", "object": "idx_a"}, {"metric": "x", "object": "y"}], "db-1", history
    )
    assert {k: rows[0][k] for k in ("min_7d", "max_7d", "min_30d", "max_30d")} == {
        "min_7d": 20.0,
        "max_7d": 30.0,
        "min_30d": 10.0,
        "max_30d": 30.0,
    }
    assert rows[1]["min_7d"] is None


def test_archiving_stops_when_its_window_closes() -> None:
    from liteshift.flows.archive import window_deadline

    sunday = datetime(2026, 11, 29, 3, 30, tzinfo=UTC)
    closes = datetime(2026, 11, 29, 5, 0, tzinfo=UTC).timestamp()
    assert window_deadline("Sun 01:00-05:00 UTC", sunday) == closes
    assert window_deadline(None, sunday) is None
    with pytest.raises(OutsideWindow):
        window_deadline("Sat 01:00-05:00 UTC", sunday)
