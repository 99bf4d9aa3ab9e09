"""The `migrate-host-batch` flow: on one host, one wave's databases of a fleet in one flow run.

A process worker starts two Python interpreters for every flow run it is given, and a run per
database cost the fleet 5-6 CPU-s per database (bench/RESULTS-fleet.md). Here the host's worker
starts one run per wave; each database is a task of it, at most max_parallel at a time, and the
task runs the whole migrate-database flow as a subflow: the same steps, lock, backup, report and
rollback as a run of its own, and a flow run per database with the fleet's tags, which the fleet
polls and a resume adopts as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

from prefect import flow, get_client, get_run_logger, task
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from liteshift.fleet.outcomes import Outcome, classify
from liteshift.flows.migrate import migrate_database
from liteshift.flows.ui import RUN_TAGS


def database_tag(key: str) -> str:
    """The tag that names one database of a fleet on each of its runs."""
    return "fleetdb-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def run_tags(fleet_id: str, key: str, host: str) -> list[str]:
    """The tags of a database's migrate-database run: the fleet finds and adopts it by them."""
    return ["liteshift", f"fleet-{fleet_id}", database_tag(key), f"host-{host}"]


def batch_tags(fleet_id: str, host: str) -> list[str]:
    """The tags of a batch run: not the fleet's own tag, which names database runs only."""
    return ["liteshift", f"fleet-{fleet_id}-batch", f"host-{host}"]


@task(name="migrate-one", task_run_name="{key}")
def migrate_one(fleet_id: str, key: str, path: str, host: str, parameters: dict[str, Any]) -> Outcome:
    """One database: the migrate-database flow as a subflow, tagged as the fleet's run for it;
    its outcome, never an exception (one database's failure is not the batch's)."""
    RUN_TAGS.set(tuple(run_tags(fleet_id, key, host)))  # this task's thread context only
    state = migrate_database(**{**parameters, "database": path, "expected_host": host}, return_state=True)
    return classify(state.type.value, state.name or "", state.message)


@flow(name="migrate-host-batch", flow_run_name="batch-{fleet_id}-{host}", log_prints=False)
def migrate_host_batch(
    fleet_id: str,
    host: str,
    databases: dict[str, str],
    parameters: dict[str, Any],
    max_parallel: int = 4,
) -> dict[str, Outcome]:
    """Migrate databases (key -> path, all on this host), at most max_parallel at a time; each
    one's outcome. A database that already has a completed run of this fleet is skipped, so a
    batch started again after a crash does only what is left.

    The host guard is each database's: on the wrong host every run is refused (outcome refused,
    its message naming both hosts) before it opens anything, as a run of its own would be."""
    done = completed_here(fleet_id, host, list(databases))
    outcomes: dict[str, Outcome] = {key: "completed" for key in done}
    todo = {key: path for key, path in databases.items() if key not in done}
    if done:
        get_run_logger().info("%d of %d databases were migrated by an earlier run", len(done), len(databases))
    runner: ThreadPoolTaskRunner[Any]
    with ThreadPoolTaskRunner(max_workers=max_parallel) as runner:
        submit: Any = runner.submit  # its overloads type a sync task's future loosely
        futures: dict[str, PrefectFuture[Outcome]] = {
            key: submit(
                migrate_one,
                parameters={
                    "fleet_id": fleet_id,
                    "key": key,
                    "path": path,
                    "host": host,
                    "parameters": parameters,
                },
            )
            for key, path in todo.items()
        }
        for key, future in futures.items():
            outcomes[key] = future.result()
    return outcomes


def completed_here(fleet_id: str, host: str, keys: list[str]) -> set[str]:
    """The keys among `keys` that have a completed migrate-database run in this fleet."""
    wanted = {database_tag(key): key for key in keys}
    done = FlowRunFilter(
        tags=FlowRunFilterTags(all_=[f"fleet-{fleet_id}", f"host-{host}"]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
    )
    with get_client(sync_client=True) as client:
        return {wanted[t] for run in all_runs(client.read_flow_runs, done) for t in run.tags if t in wanted}


def all_runs(read: Callable[..., list[FlowRun]], flow_run_filter: FlowRunFilter) -> Iterator[FlowRun]:
    """Every flow run the filter matches, read (a client's read_flow_runs, or one that retries it)
    a page of 200, the API's most, at a time."""
    offset = 0
    while True:
        runs = read(flow_run_filter=flow_run_filter, limit=200, offset=offset)
        yield from runs
        if len(runs) < 200:
            return
        offset += 200
