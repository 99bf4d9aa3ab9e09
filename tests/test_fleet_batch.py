"""The migrate-host-batch flow on the session's test server: one run for a host's databases, each
a task running migrate-database as a subflow with the fleet's tags; a batch run again skips what
an earlier one completed."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import FLEET_MIGRATIONS, fleet_db, has_fleet_index, user_snapshot
from prefect import flow, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

from liteshift.core.guard import host_id
from liteshift.flows import fleet_batch
from liteshift.flows.fleet_batch import database_tag, migrate_host_batch

pytestmark = pytest.mark.usefixtures("prefect_harness")

MIGRATIONS = FLEET_MIGRATIONS
PARAMETERS = {"migrations_dir": str(MIGRATIONS), "retries": 0, "bench_budget_s": 0}


def _runs(fleet_id: str) -> dict[str, list[str]]:
    """The fleet's database runs: database path -> state types, oldest first."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"fleet-{fleet_id}"])), limit=200
        )
    found: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: r.created or 0):
        assert run.state is not None
        found.setdefault(run.parameters["database"], []).append(run.state.type.value)
    return found


def test_a_batch_migrates_each_database_in_its_own_tagged_run_and_one_failure_stays_its_own(
    tmp_path: Path,
) -> None:
    good = [fleet_db(tmp_path / f"{i}.db") for i in range(3)]
    bad = fleet_db(tmp_path / "dup.db", duplicates=True)
    before = user_snapshot(bad)
    here = host_id()
    databases = {f"{here}:{p}": str(p) for p in [*good, bad]}
    outcomes = migrate_host_batch("batch-one", here, databases, PARAMETERS, max_parallel=2)
    assert outcomes == {
        **{f"{here}:{p}": "completed" for p in good},
        f"{here}:{bad}": "failed",  # the UNIQUE index over duplicates fails in its transaction
    }
    assert all(has_fleet_index(p) for p in good) and not has_fleet_index(bad)
    assert user_snapshot(bad) == before
    assert _runs("batch-one") == {
        **{str(p): ["COMPLETED"] for p in good},
        str(bad): ["FAILED"],
    }
    with get_client(sync_client=True) as client:
        for key in databases:
            [run] = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[database_tag(key)]))
            )
            assert {"liteshift", "fleet-batch-one", f"host-{here}"} <= set(run.tags)
            assert run.parent_task_run_id is not None  # a task of the batch run, not a run of its own


def test_a_batch_started_again_skips_the_databases_an_earlier_run_completed(tmp_path: Path) -> None:
    here = host_id()
    first = {f"{here}:{p}": str(p) for p in (fleet_db(tmp_path / f"{i}.db") for i in range(2))}
    assert set(migrate_host_batch("batch-again", here, first, PARAMETERS).values()) == {"completed"}
    later = fleet_db(tmp_path / "later.db")
    both = {**first, f"{here}:{later}": str(later)}
    assert migrate_host_batch("batch-again", here, both, PARAMETERS) == dict.fromkeys(both, "completed")
    runs = _runs("batch-again")
    assert runs == {path: ["COMPLETED"] for path in both.values()}  # one run each, none twice


def test_a_batch_on_the_wrong_host_opens_none_of_its_databases(tmp_path: Path) -> None:
    db = fleet_db(tmp_path / "0.db")
    before = user_snapshot(db)
    outcomes = migrate_host_batch("batch-wrong", "elsewhere", {f"elsewhere:{db}": str(db)}, PARAMETERS)
    assert outcomes == {f"elsewhere:{db}": "refused"}
    assert user_snapshot(db) == before and not has_fleet_index(db)
    assert not list(tmp_path.glob("*backup*"))


@flow(name="migrate-database-stand-in")
def _slow(**parameters: Any) -> None:
    """Records how many databases are being migrated at once."""
    with _lock:
        _now[0] += 1
        _peak[0] = max(_peak[0], _now[0])
    time.sleep(2.0)  # much longer than a subflow's start, so the runs overlap
    with _lock:
        _now[0] -= 1


_lock = threading.Lock()
_now, _peak = [0], [0]


def test_a_batch_migrates_at_most_max_parallel_databases_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_batch, "migrate_database", _slow)
    here = host_id()
    databases = {f"{here}:/srv/{i}.db": f"/srv/{i}.db" for i in range(5)}
    outcomes = migrate_host_batch("batch-parallel", here, databases, {}, max_parallel=2)
    assert outcomes == dict.fromkeys(databases, "completed")
    assert _peak[0] == 2
