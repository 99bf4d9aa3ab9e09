"""The flow's deployment-facing guards on the embedded API: the window, and one run per database."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import index_names, snapshot

import liteshift.flows.migrate as flow_mod
from liteshift.core import lock
from liteshift.core.guard import WrongHost
from liteshift.core.window import OutsideWindow, WindowTooShort
from liteshift.flows.concurrency import DatabaseBusy, limit_name, one_run_per_database

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = {"bench_min_runs": 3, "bench_budget_s": 0.0, "retry_delay_s": 0.0}


def run(db: Path, tmp_path: Path, **params: Any) -> dict[str, Any]:
    report = flow_mod.migrate_database(str(db), report_dir=str(tmp_path / "reports"), **{**FAST, **params})
    return report.summary()


def _window_around_now(minutes: int) -> str:
    now = datetime.now(UTC)
    start, end = now - timedelta(minutes=minutes), now + timedelta(minutes=minutes)
    return f"daily {start:%H:%M}-{end:%H:%M} UTC"


def test_outside_the_window_nothing_is_written(make_db, tmp_path: Path) -> None:
    db = make_db()
    before = snapshot(db)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%a")
    with pytest.raises(OutsideWindow, match=f"Outside the maintenance window '{tomorrow} 00:00-00:01 UTC'"):
        run(db, tmp_path, maintenance_window=f"{tomorrow} 00:00-00:01 UTC")
    assert snapshot(db) == before


def test_inside_the_window_it_is_checked_before_queueing_and_again_under_the_slot(
    make_db, tmp_path: Path
) -> None:
    db = make_db()
    summary = run(db, tmp_path, maintenance_window=_window_around_now(90))
    assert summary["status"] == "completed"
    names = [s["name"] for s in summary["steps"]]
    assert names[:5] == ["validate", "maintenance-window", "dry-run", "window-fit", "maintenance-window"]
    fit = next(s for s in summary["steps"] if s["name"] == "window-fit")["detail"]
    assert fit.startswith("predicted ") and "(rehearsal on a copy: backup " in fit
    assert "idx_worklogs_user_range" in index_names(db)


def test_a_run_the_rehearsal_says_would_outlast_the_window_writes_nothing(
    make_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_db()
    before = snapshot(db)
    real = flow_mod.dry_run

    def slow_rehearsal(*args: Any, **kw: Any) -> Any:
        result = real(*args, **kw)
        result.apply_seconds = 4 * 3600.0  # as if the copy had taken 4 h to migrate
        return result

    monkeypatch.setattr(flow_mod, "dry_run", slow_rehearsal)
    window = _window_around_now(90)
    with pytest.raises(WindowTooShort) as err:
        run(db, tmp_path, maintenance_window=window)
    assert err.value.what == f"The run would outlast the maintenance window '{window}'"
    assert "is predicted to take 14400." in err.value.why and "nothing was written" in err.value.why
    assert snapshot(db) == before


def test_a_second_run_on_a_busy_database_is_refused_and_writes_nothing(make_db, tmp_path: Path) -> None:
    db = make_db()
    before = snapshot(db)
    holding, done = threading.Event(), threading.Event()

    def other_run() -> None:
        with one_run_per_database(db, 5), lock.held(db):
            holding.set()
            done.wait(30)

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert holding.wait(30)
        with pytest.raises(DatabaseBusy) as err:
            run(db, tmp_path, queue_timeout_s=1)
        assert err.value.what == f"Database {db} is being migrated by another Prefect run"
        assert err.value.why == f"its concurrency limit {limit_name(db)} stayed taken for 1 s"
    finally:
        done.set()
        thread.join()
    after = snapshot(db)
    assert {k: v for k, v in after.items() if "liteshift_lock" not in k} == before


def test_a_run_for_another_host_refuses_before_opening_the_database(
    make_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITESHIFT_HOST_ID", "host-b")
    db = make_db()
    before = snapshot(db)
    with pytest.raises(WrongHost) as err:
        run(db, tmp_path, expected_host="host-a")
    assert str(err.value) == (
        "This run is for host 'host-a' but runs on 'host-b': its database file lives on that host; "
        "nothing was opened here. Try: route it to the work queue of 'host-a' (liteshift fleet does), "
        "or start the worker there with LITESHIFT_HOST_ID=host-a"
    )
    assert snapshot(db) == before and not (tmp_path / "reports").exists()
