"""The `migrate-fleet` flow: one migration over many SQLite files on several hosts, on Prefect's
own machinery: each database is a `migrate-database` run sent to the work queue of the host that
holds it (run_deployment, as a subflow), canary first, then waves, halted by failures.

liteshift.fleet decides (plan, waves, outcome of a run, when to halt); this module only talks to
Prefect. A rerun with the same fleet id reads the plan, finds the child runs by tag, adopts the
running ones and starts only what is missing: idempotency keys make a second run for a database
impossible even when the parent died between starting a child and recording it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast
from uuid import UUID

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun
from prefect.states import Cancelled, Crashed

from liteshift.core import guard
from liteshift.core.config import default_migrations_dir, default_report_dir
from liteshift.core.errors import BadInput, MigrationError
from liteshift.fleet.config import BATCH_DEPLOYMENT, CHILD_DEPLOYMENT
from liteshift.fleet.manifest import Host, Manifest, Target, glob_paths, inventory, load_manifest
from liteshift.fleet.outcomes import (
    NEED_A_PERSON,
    RETRIED,
    Outcome,
    classify,
    resume_hint,
    should_halt,
    unfinished,
)
from liteshift.fleet.rollout import Plan, check_resume, make_plan, read_plan, replace_plan, write_plan

# A child's exception is classified by its class's outcome (outcomes.error_family): every module
# that defines a member of the error family is imported by now (tests/test_fleet.py checks it).
from liteshift.flows import concurrency  # noqa: F401
from liteshift.flows.approval import ask_approval
from liteshift.flows.fleet_batch import all_runs, batch_tags, database_tag, run_tags
from liteshift.tasks import dry_run, rollback  # noqa: F401

INVENTORY_DEPLOYMENT = "fleet-inventory/host"
LIVE_WORKER_S = 120.0  # a queue whose last poll is older has no live worker
POLL_S = 2.0
API_RETRIES = 5  # about a minute of a server answering 500 or not at all


T = TypeVar("T")


class QueuesNotServed(BadInput):
    """A host's work queue has no live worker: its runs would wait for ever."""


class FleetHalted(MigrationError):
    """The fleet stopped: a canary failed, or failures reached the threshold."""


@dataclass
class Child:
    """The newest run of one database in this fleet, and how many it had."""

    target: Target
    wave: str
    run: FlowRun | None = None
    outcome: Outcome = "pending"
    attempts: int = 0
    started: float = 0.0
    seconds: float | None = None
    error: str = ""


@flow(name="migrate-fleet", flow_run_name="fleet-{fleet_id}", log_prints=False)
def migrate_fleet(
    manifest: str,
    fleet_id: str,
    migrations_dir: str | None = None,
    canary: int | list[str] = 1,
    waves: str = "100%",
    max_failures: int | None = None,
    max_failure_rate: float | None = None,
    approve_after_canary: bool = False,
    approval_timeout_s: int = 3600,
    pending_timeout_s: float = 1800.0,
    max_parallel: int = 4,
    retry_failed: bool = False,
    plan_dir: str | None = None,
    dispatch: str = "batch",
    deployment: str = CHILD_DEPLOYMENT,
    batch_deployment: str = BATCH_DEPLOYMENT,
    parameters: dict[str, Any] | None = None,
    replan: bool = False,
) -> dict[str, int]:
    """Plan (or read the plan), check every queue is served, then the canary and the waves. A
    resume starts the crashed, deferred and unreached databases again; with retry_failed also the
    refused and failed ones (after a person fixed them).

    dispatch "batch": a stage reaches each host as one migrate-host-batch run, its databases
    tasks of it; "per-database": one migrate-database run per database."""
    log = get_run_logger()
    plan = load_or_make_plan(
        Path(manifest),
        fleet_id,
        migrations_dir,
        canary,
        waves,
        max_failures,
        max_failure_rate,
        plan_dir,
        pending_timeout_s,
        replan,
    )
    check_queues(sorted({t.queue for t in plan.targets}))
    children = adopt(plan)
    board = Board(plan, children)
    again = RETRIED + (NEED_A_PERSON if retry_failed else ())
    limits = Limits(max_parallel, pending_timeout_s)
    for wave, keys in plan.stages():
        if dispatch == "batch":
            run_wave_batched(plan, children, keys, limits, board, batch_deployment, parameters or {}, again)
        else:
            run_wave(plan, children, keys, limits, board, deployment, parameters or {}, again)
        reason = should_halt(plan, wave, {k: c.outcome for k, c in children.items()})
        if reason:
            cancel_not_started(children)
            board.publish(final=True)
            raise FleetHalted(
                f"Fleet {fleet_id} halted in the {wave}",
                reason,
                f"fix what failed (see the table artifact), then resume with: "
                f"{resume_hint(fleet_id, manifest)}",
            )
        log.info("%s done: %s", wave, board.counts())
        if wave == "canary" and approve_after_canary and plan.waves:
            summary = f"# Fleet {fleet_id}: the canary finished\n\n" + "".join(
                f"- {children[k].target.key}: {children[k].outcome}\n" for k in plan.canary
            )
            ask_approval(summary, Path(f"fleet {fleet_id}"), approval_timeout_s)
    board.publish(final=True)
    return board.counts()


def load_or_make_plan(
    manifest: Path,
    fleet_id: str,
    migrations_dir: str | None,
    canary: int | list[str],
    waves: str,
    max_failures: int | None,
    max_failure_rate: float | None,
    plan_dir: str | None,
    timeout_s: float = 300.0,
    replan: bool = False,
    look_only: bool = False,
) -> Plan:
    """The fleet's plan file when it exists (a resume keeps its plan) and the manifest still
    yields its databases, else a new one, written (replan: over the kept one). look_only (the
    status of a fleet): the kept plan as it is, the manifest not read again."""
    directory = Path(plan_dir) if plan_dir else default_report_dir()
    existing = read_plan(directory, fleet_id)
    if existing is not None and look_only:
        return existing
    spec = load_manifest(manifest)
    targets = inventory(spec, lambda host: inventory_on_host(host, spec, fleet_id, timeout_s))
    if existing is not None and not replan:
        check_resume(existing, targets, str(manifest))
        return existing
    plan = make_plan(
        fleet_id,
        targets,
        canary=canary,
        waves=[w.strip() for w in waves.split(",")],
        max_failures=max_failures,
        max_failure_rate=max_failure_rate,
        migrations_dir=str(migrations_dir or spec.migrations_dir or default_migrations_dir()),
        manifest=str(manifest),
    )
    if existing is not None:
        replace_plan(plan, directory)
    else:
        write_plan(plan, directory)
    return plan


def inventory_on_host(host: Host, spec: Manifest, fleet_id: str, timeout_s: float) -> list[str]:
    """A host's database paths: globbed here, or (inventory = true) by a run on its own queue,
    which reads its own disk and hands the list back as a table artifact."""
    if not host.inventory:
        return glob_paths(host.paths, spec.path.parent)
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment

    check_queues([host.queue])
    run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync call: a FlowRun
        INVENTORY_DEPLOYMENT,
        parameters={"host": host.name, "patterns": list(host.paths), "fleet_id": fleet_id},
        work_queue_name=host.queue,
        timeout=timeout_s,
        tags=["liteshift", f"fleet-{fleet_id}-inventory"],
        as_subflow=True,
    )
    if run.state is None or not run.state.is_completed():
        raise BadInput(
            f"The inventory of host {host.name} did not finish",
            f"its run {run.id} is {run.state.name if run.state else 'unknown'} after {timeout_s:.0f} s",
            f"check the worker of queue {host.queue}, then run again",
        )
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    data = next(a.data for a in found if a.key == f"liteshift-inventory-{fleet_id}-{host.name}")
    rows: list[dict[str, Any]] = (
        json.loads(data) if isinstance(data, str) else cast(list[dict[str, Any]], data)
    )
    return [str(r["path"]) for r in rows]


@flow(name="fleet-inventory", flow_run_name="inventory-{host}", log_prints=False)
def inventory_host(host: str, patterns: list[str], fleet_id: str) -> list[str]:
    """On the host itself: glob its disk for the fleet's databases (absolute patterns)."""
    guard.check_host(host)
    paths = glob_paths(patterns, Path("/"))
    create_table_artifact(
        key=f"liteshift-inventory-{fleet_id}-{host}",
        table=[{"path": p} for p in paths],
        description=f"Databases of host {host} for fleet {fleet_id}",
    )
    return paths


def check_queues(queues: list[str], pool: str = "liteshift", grace_s: float = 30.0) -> None:
    """Refuse before the first wave when a queue has no worker that polled it lately (after a
    short grace: workers started a moment ago, by `make up`, have not polled yet)."""
    deadline = time.time() + grace_s
    while True:
        idle = _idle_queues(queues, pool)
        if not idle:
            return
        if time.time() > deadline:
            break
        time.sleep(POLL_S)
    raise QueuesNotServed(
        "Some hosts' work queues have no live worker",
        f"{', '.join(idle)}; their runs would wait for ever; nothing was started",
        f"start a worker per host (make up FLEET_MANIFEST=FILE, or prefect worker start --pool {pool} "
        "--work-queue QUEUE on that host), then run again",
    )


def _idle_queues(queues: list[str], pool: str) -> list[str]:
    from prefect.exceptions import ObjectNotFound

    idle = []
    with get_client(sync_client=True) as client:
        for name in queues:
            try:
                queue = client.read_work_queue_by_name(name, work_pool_name=pool)
            except ObjectNotFound:
                idle.append(f"{name} (does not exist)")
                continue
            polled = queue.last_polled.timestamp() if queue.last_polled else None
            if polled is None or time.time() - polled > LIVE_WORKER_S:
                ago = "never" if polled is None else f"{time.time() - polled:.0f} s ago"
                idle.append(f"{name} (last polled {ago})")
    return idle


def adopt(plan: Plan) -> dict[str, Child]:
    """Every target with the newest existing child run of this fleet (found by tag), if any."""
    children = {t.key: Child(t, plan.wave_of(t.key)) for t in plan.targets}
    by_tag = {database_tag(k): c for k, c in children.items()}
    mine = FlowRunFilter(tags=FlowRunFilterTags(all_=[f"fleet-{plan.fleet_id}"]))
    with get_client(sync_client=True) as client:
        for run in all_runs(client.read_flow_runs, mine):
            child = next((by_tag[t] for t in run.tags if t in by_tag), None)
            if child is None:
                continue
            child.attempts += 1
            if child.run is None or (run.created and child.run.created and run.created > child.run.created):
                child.run = run
    for child in children.values():
        if child.run is not None:
            # An adopted run has waited for a worker since it was created, not since 1970: a zero
            # here cancelled every adopted Scheduled run at once as unreached.
            child.started = child.run.created.timestamp() if child.run.created else time.time()
            _refresh(child, child.run)
    return children


def _active(child: Child) -> bool:
    return child.run is not None and child.outcome in ("pending", "running")


def start_child(plan: Plan, child: Child, deployment: str, parameters: dict[str, Any]) -> None:
    """One migrate-database run on the host's queue; the key makes a second one impossible."""
    from prefect.deployments import run_deployment

    t = child.target
    run: FlowRun = _api(  # type: ignore[assignment]  # sync call: a FlowRun
        run_deployment,
        deployment,
        parameters={
            **parameters,
            "database": t.path,
            "migrations_dir": plan.migrations_dir,
            "expected_host": t.host,
        },
        work_queue_name=t.queue,
        idempotency_key=f"{plan.fleet_id}:{t.key}:{child.attempts}",
        tags=run_tags(plan.fleet_id, t.key, t.host),
        timeout=0,
        as_subflow=True,
    )
    child.attempts += 1
    child.run, child.outcome, child.started = run, "pending", time.time()
    child.seconds, child.error = None, ""


def _refresh(child: Child, run: FlowRun) -> None:
    state = run.state
    child.run = run
    if state is None:
        return
    child.outcome = classify(state.type.value, state.name or "", state.message)
    if child.outcome not in ("pending", "running"):
        child.error = "" if child.outcome == "completed" else (state.message or state.name or "")
        if run.start_time and run.end_time:
            child.seconds = (run.end_time - run.start_time).total_seconds()


@dataclass(frozen=True)
class Limits:
    """How many of a host's runs may be started and not finished, and how long one may wait for
    a worker before it is cancelled (unreached)."""

    running_per_host: int
    pending_timeout_s: float


def run_wave(
    plan: Plan,
    children: dict[str, Child],
    keys: list[str],
    limits: Limits,
    board: Board,
    deployment: str,
    parameters: dict[str, Any],
    again: tuple[Outcome, ...] = RETRIED,
) -> None:
    """Start the wave's runs, at most limits.running_per_host per host at a time (a process worker
    spawns every run it is given at once: 64 at once starved a 2-core host and its server, see
    bench/RESULTS-fleet.md), and poll them until each has an outcome; a crash is retried once."""
    todo = [k for k in keys if children[k].outcome in (*again, "pending") and not _active(children[k])]
    retried: set[str] = set()
    while True:
        active = [children[k] for k in keys if _active(children[k])]
        with get_client(sync_client=True) as client:
            for child in active:
                assert child.run is not None
                _refresh(child, _api(client.read_flow_run, child.run.id))
        for key in keys:
            child = children[key]
            if child.outcome == "crashed" and key not in retried:
                retried.add(key)
                todo.insert(0, key)
            elif child.outcome == "crashed" and key not in todo:
                child.outcome = "failed"  # crashed twice: counted as a failure
        for child in (children[k] for k in keys if overdue(children[k], limits.pending_timeout_s)):
            _cancel(child)
        busy: dict[str, int] = {}
        for child in (children[k] for k in keys if _active(children[k])):
            busy[child.target.host] = busy.get(child.target.host, 0) + 1
        for key in list(todo):
            host = children[key].target.host
            if busy.get(host, 0) < limits.running_per_host:
                start_child(plan, children[key], deployment, parameters)
                busy[host] = busy.get(host, 0) + 1
                todo.remove(key)
        board.publish()
        if not todo and not any(_active(children[k]) for k in keys):
            return
        time.sleep(POLL_S)


@dataclass
class Batch:
    """One migrate-host-batch run: a host's databases of one stage, each a task of the run."""

    host: str
    keys: list[str]
    run: FlowRun
    started: float
    polled: float = 0.0


BATCH_POLL_S = 10.0  # how often a running batch's database runs are read (one query per host)


def run_wave_batched(
    plan: Plan,
    children: dict[str, Child],
    keys: list[str],
    limits: Limits,
    board: Board,
    deployment: str,
    parameters: dict[str, Any],
    again: tuple[Outcome, ...] = RETRIED,
) -> None:
    """The stage's databases as one batch run per host (max_parallel of them at a time within
    it), polled until each database has an outcome. A database whose run crashed, or whose batch
    ended before it did (killed, crashed), goes into a new batch once; a second time it failed.

    A resumed parent adopts the batches still going, and polls alone the database runs a dead
    batch left running until the zombie automation ends them (as it does a run of its own)."""
    todo = [k for k in keys if children[k].outcome in (*again, "pending") and not _active(children[k])]
    adopted, started = adopt_batches(plan, keys)
    batches = {b.host: b for b in adopted}
    covered = {k for b in adopted for k in b.keys}
    todo = [k for k in todo if k not in covered]
    orphans = [k for k in keys if _active(children[k]) and k not in covered]
    retried: set[str] = set()

    def settle(key: str, why: str) -> None:
        """A database left without an outcome, or crashed: once more, else failed."""
        child = children[key]
        if child.outcome not in ("pending", "running", "crashed"):
            return
        if key in retried:
            child.outcome, child.error = "failed", child.error or "crashed twice"
            return
        retried.add(key)
        child.outcome, child.error = "crashed", child.error or why
        todo.append(key)

    while True:
        for host in sorted({children[k].target.host for k in todo} - set(batches)):
            mine = [k for k in todo if children[k].target.host == host]
            number = started[host]
            batches[host] = start_batch(plan, children, host, mine, limits, deployment, parameters, number)
            started[host] += 1
            todo = [k for k in todo if k not in mine]
        for host, batch in list(batches.items()):
            ended = refresh_batch(children, batch)
            if not ended and _batch_waiting(batch) and time.time() - batch.started > limits.pending_timeout_s:
                _cancel_batch(batch, children)
                ended = True
            if ended:
                del batches[host]
                _crash_left_running(batch, children)
                for key in batch.keys:
                    settle(key, f"its batch run {batch.run.id} ended before it did")
        if orphans:
            with get_client(sync_client=True) as client:
                for key in list(orphans):
                    child = children[key]
                    assert child.run is not None
                    _refresh(child, _api(client.read_flow_run, child.run.id))
                    if not _active(child):
                        orphans.remove(key)
                        settle(key, "its run crashed")
        board.publish()
        if not todo and not batches and not orphans:
            return
        time.sleep(POLL_S)


def start_batch(
    plan: Plan,
    children: dict[str, Child],
    host: str,
    keys: list[str],
    limits: Limits,
    deployment: str,
    parameters: dict[str, Any],
    number: int,
) -> Batch:
    """The host's batch run `number` of this fleet, on its queue, for these databases; the key
    makes a second one impossible (a request retried after a lost answer gets the same run)."""
    from prefect.deployments import run_deployment

    run: FlowRun = _api(  # type: ignore[assignment]  # sync call: a FlowRun
        run_deployment,
        deployment,
        parameters={
            "fleet_id": plan.fleet_id,
            "host": host,
            "databases": {k: children[k].target.path for k in keys},
            "parameters": {**parameters, "migrations_dir": plan.migrations_dir},
            "max_parallel": limits.running_per_host,
        },
        work_queue_name=children[keys[0]].target.queue,
        idempotency_key=f"{plan.fleet_id}:batch:{host}:{number}",
        tags=batch_tags(plan.fleet_id, host),
        timeout=0,
        as_subflow=True,
    )
    for key in keys:
        child = children[key]
        child.outcome, child.seconds, child.error = "pending", None, ""
    return Batch(host, list(keys), run, time.time())


def refresh_batch(children: dict[str, Child], batch: Batch) -> bool:
    """Read the batch run and, every BATCH_POLL_S and when it ends, its database runs; True
    when the batch run has ended (its databases' outcomes are then as final as they get)."""
    with get_client(sync_client=True) as client:
        batch.run = _api(client.read_flow_run, batch.run.id)
        ended = batch.run.state is not None and batch.run.state.is_final()
        if not ended and time.time() - batch.polled < BATCH_POLL_S:
            return False
        batch.polled = time.time()
        by_tag = {database_tag(k): children[k] for k in batch.keys}
        inside = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[batch.run.id]))
        for run in all_runs(partial(_api, client.read_flow_runs), inside):
            child = next((by_tag[t] for t in run.tags if t in by_tag), None)
            if child is not None:
                if child.run is None or child.run.id != run.id:
                    child.attempts += 1
                _refresh(child, run)
    if ended and batch.run.state is not None and not batch.run.state.is_completed():
        why = batch.run.state.message or batch.run.state.name or ""
        for child in (children[k] for k in batch.keys):
            if child.outcome in ("pending", "running"):
                child.error = f"its batch run {batch.run.id} is {batch.run.state.name}: {why}"[:300]
    return ended


def adopt_batches(plan: Plan, keys: list[str]) -> tuple[list[Batch], Counter[str]]:
    """The batch runs of this fleet not yet ended that hold some of these keys (a parent killed
    and resumed waits for them instead of starting their databases again), and how many batch
    runs each host had in all (the next one's number)."""
    found: dict[str, Batch] = {}
    count: Counter[str] = Counter()
    wanted = set(keys)
    batches = FlowRunFilter(tags=FlowRunFilterTags(all_=[f"fleet-{plan.fleet_id}-batch"]))
    with get_client(sync_client=True) as client:
        for run in all_runs(partial(_api, client.read_flow_runs), batches):
            host = str(run.parameters.get("host", ""))
            count[host] += 1
            mine = [k for k in run.parameters.get("databases", {}) if k in wanted]
            if mine and host not in found and run.state is not None and not run.state.is_final():
                started = run.created.timestamp() if run.created else time.time()
                found[host] = Batch(host, mine, run, started)
    return list(found.values()), count


def _crash_left_running(batch: Batch, children: dict[str, Child]) -> None:
    """A database run its ended batch left Running or Pending died with the batch's process (a
    killed worker): marked Crashed, so the record says so before its database runs again."""
    with get_client(sync_client=True) as client:
        for child in (children[k] for k in batch.keys):
            if child.run is None or child.outcome not in ("pending", "running"):
                continue
            state = batch.run.state.name if batch.run.state else "gone"
            _api(
                client.set_flow_run_state,
                child.run.id,
                Crashed(message=f"its batch run {batch.run.id} ended ({state}) before it did"),
                force=True,
            )
            child.outcome = "crashed"


def _batch_waiting(batch: Batch) -> bool:
    state = batch.run.state
    return state is not None and state.type.value in ("SCHEDULED", "PENDING")


def _cancel_batch(batch: Batch, children: dict[str, Child]) -> None:
    """A batch still waiting for a worker at the timeout: cancelled, its databases unreached."""
    with get_client(sync_client=True) as client:
        _api(
            client.set_flow_run_state,
            batch.run.id,
            Cancelled(message="not started before the fleet's timeout"),
        )
    for child in (children[k] for k in batch.keys):
        if child.outcome == "pending":
            child.outcome = "unreached"
            child.error = "cancelled: its batch still waited for a worker at the timeout"


def not_started(child: Child) -> bool:
    """The child's run waits for a worker (Scheduled, Late or Pending). A Paused run has started
    and waits for a person: it is neither unreached at the timeout nor cancelled on a halt."""
    state = child.run.state if child.run is not None else None
    waiting = state is not None and state.type.value in ("SCHEDULED", "PENDING")
    return waiting and child.outcome == "pending"  # not one this fleet run cancelled already


def overdue(child: Child, timeout_s: float, now: float | None = None) -> bool:
    """A run not started longer than timeout_s after it was created (or adopted from a dead parent)."""
    return not_started(child) and (time.time() if now is None else now) - child.started > timeout_s


def _api(call: Callable[..., T], *args: Any, **kw: Any) -> T:
    """One Prefect API call, retried on a server error or a lost connection (a busy server
    answers 500 when its database pool runs out); a server that stays away halts the fleet."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    for attempt in range(API_RETRIES + 1):
        try:
            return call(*args, **kw)
        except (PrefectHTTPStatusError, httpx.TransportError) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", 500)
            if status < 500 or attempt == API_RETRIES:
                raise FleetHalted(
                    "The Prefect server did not answer the fleet",
                    f"{type(exc).__name__}: {exc}; the runs already started go on",
                    "when the server is healthy again, run the same command: the fleet resumes and "
                    "adopts them",
                ) from exc
            time.sleep(min(30.0, 2.0**attempt))
    raise AssertionError("unreachable")


def _cancel(child: Child) -> None:
    if child.run is None:
        return
    with get_client(sync_client=True) as client:
        _api(
            client.set_flow_run_state,
            child.run.id,
            Cancelled(message="not started before the fleet's timeout"),
        )
    child.outcome, child.error = "unreached", "cancelled: still waiting for a worker at the timeout"


def cancel_not_started(children: dict[str, Child]) -> None:
    """On halt: runs still waiting for a worker are cancelled; running ones finish."""
    for child in children.values():
        if not_started(child):
            _cancel(child)


def describe(plan: Plan, children: dict[str, Child] | None, as_json: bool) -> str:
    """The plan (and, for status, each database's newest run) as text or one JSON object."""
    rows = []
    for t in plan.targets:
        child = children[t.key] if children else None
        rows.append(
            {
                "database": t.key,
                "wave": plan.wave_of(t.key),
                "state": child.outcome if child else None,
                "attempts": child.attempts if child else None,
                "run": str(child.run.id) if child and child.run else None,
                "error": child.error if child else None,
            }
        )
    if as_json:
        return json.dumps({"fleet_id": plan.fleet_id, "digest": plan.digest(), "databases": rows})
    hosts: dict[str, int] = {}
    for t in plan.targets:
        hosts[t.host] = hosts.get(t.host, 0) + 1
    lines = [
        f"Fleet {plan.fleet_id}: {len(plan.targets)} databases on {len(hosts)} hosts "
        f"({', '.join(f'{h} {n}' for h, n in sorted(hosts.items()))}); plan digest {plan.digest()[:16]}",
        f"canary {len(plan.canary)}, then waves of {', '.join(str(len(w)) for w in plan.waves) or 'none'}",
    ]
    for r in rows:
        lines.append(f"  {r['wave']:<8} {r['state'] or '':<10} {r['database']}")
        if r["error"]:  # why it is not migrated, the child run's own message (one line)
            lines.append(f"           {' '.join(str(r['error']).split())[:300]}")
    return "\n".join(lines)


@dataclass
class Board:
    """The progress and table artifacts of the fleet, rewritten as runs finish."""

    plan: Plan
    children: dict[str, Child]
    progress_id: UUID | None = None
    shown: dict[str, Outcome] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return dict(Counter(c.outcome for c in self.children.values()))

    def publish(self, final: bool = False) -> None:
        """Rewrite the artifacts when an outcome changed (every poll would be an API call each)."""
        now = {k: c.outcome for k, c in self.children.items()}
        if now == self.shown and self.progress_id is not None and not final:
            return
        self.shown = now
        done = sum(c.outcome not in ("pending", "running") for c in self.children.values())
        pct = round(100.0 * done / max(1, len(self.children)), 1)
        if self.progress_id is None:
            self.progress_id = create_progress_artifact(  # type: ignore[assignment]
                pct, key=f"liteshift-fleet-{self.plan.fleet_id}", description="databases finished"
            )
        else:
            update_progress_artifact(self.progress_id, pct)
        create_table_artifact(
            key=f"liteshift-fleet-table-{self.plan.fleet_id}",
            table=[self.row(c) for c in self.children.values()],
            description=f"Fleet {self.plan.fleet_id}: one row per database",
        )
        if final:
            lines = [f"# Fleet {self.plan.fleet_id}", "", f"Plan digest `{self.plan.digest()}`", ""]
            lines += [f"- {outcome}: {n}" for outcome, n in sorted(self.counts().items())]
            left = unfinished(self.plan.fleet_id, self.plan.manifest, self.counts())
            lines += ["", f"**Not finished.** {left}"] if left else []
            create_markdown_artifact(
                key=f"liteshift-fleet-summary-{self.plan.fleet_id}",
                markdown="\n".join(lines) + "\n",
                description=f"Fleet {self.plan.fleet_id}: summary",
            )

    def row(self, c: Child) -> dict[str, Any]:
        from prefect.settings import PREFECT_UI_URL

        ui = PREFECT_UI_URL.value()
        return {
            "database": c.target.path,
            "host": c.target.host,
            "wave": c.wave,
            "state": c.outcome,
            "seconds": None if c.seconds is None else round(c.seconds, 1),
            "error": c.error[:300],
            "run": f"{ui}/runs/flow-run/{c.run.id}" if c.run is not None and ui else "",
        }
