"""Fleets end to end: a real server, three "hosts" (a directory, a work queue and a process worker
with its own LITESHIFT_HOST_ID each), and `liteshift fleet run` as a user types it.

The migration is tests/fixtures/unique_over_duplicates (a UNIQUE index on author_email): a
database with duplicate e-mails fails after its backup and is rolled back, the others complete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import FLEET_MIGRATIONS, fleet_db, has_fleet_index
from rest import api
from stack import ROOT, Stack, create_queues, down, install_automation, start, start_workers, stop, up

from liteshift.flows.runtime import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.fleet]

HOSTS = ("a", "b", "c")
MIGRATIONS = FLEET_MIGRATIONS


def _manifest(root: Path, scenario: str, per_host: int = 2, bad: tuple[str, ...] = ()) -> Path:
    """A scenario's databases, per_host on each host, and its manifest; `bad` names
    host/NNN databases made with duplicates."""
    for host in HOSTS:
        for i in range(per_host):
            fleet_db(root / scenario / host / f"{i:03d}.db", duplicates=f"{host}/{i:03d}" in bad)
    text = f'migrations = "{MIGRATIONS}"\n' + "".join(
        f'[hosts.{h}]\npaths = ["{root / scenario / h}/*.db"]\n' for h in HOSTS
    )
    path = root / f"{scenario}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleet")


@pytest.fixture(scope="module")
def stack(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Server and one worker per host of a manifest, stopped by PID at the end."""
    hosts = workdir / "hosts.toml"
    hosts.write_text("".join(f'[hosts.{h}]\npaths = ["{workdir}/*.none"]\n' for h in HOSTS))
    roots = ("LITESHIFT_ALLOWED_ROOTS", os.pathsep.join([str(workdir), str(MIGRATIONS)]))
    # Heartbeats every 30 s (the least Prefect allows; 180 by default): a killed run is found dead in
    # about a minute.
    heartbeat = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    s = Stack(
        run_dir=tmp_path_factory.mktemp("fleet-stack"),
        port=free_port(),
        worker_poll_s=1,
        extra_env=(roots, heartbeat),
        fleet_manifest=hosts,
    )
    try:
        up(s)
        yield s
    finally:
        down(s)
        for log in sorted(s.run_dir.glob("worker*.log")):
            print(f"--- tail of {log.name}\n{log.read_text(errors='replace')[-2000:]}")


def fleet_command(action: str, manifest: Path, fleet_id: str) -> list[str]:
    """`liteshift fleet ACTION` for a scenario's manifest, its plans beside it."""
    liteshift = str(Path(sys.executable).with_name("liteshift"))
    plans = str(manifest.parent / "plans")
    return [
        liteshift,
        "fleet",
        action,
        "--manifest",
        str(manifest),
        "--fleet-id",
        fleet_id,
        "--plan-dir",
        plans,
    ]


def fleet(stack: Stack, manifest: Path, fleet_id: str, *args: str, wait: bool = True) -> Any:
    """`liteshift fleet run` against the stack; (exit code, stdout + stderr) or the process."""
    cmd = [
        *fleet_command("run", manifest, fleet_id),
        "--param",
        "retries=0",
        "--param",
        "busy_timeout_ms=500",
        "--param",
        "bench_budget_s=0",
        *args,
    ]
    if not wait:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=stack.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    done = subprocess.run(cmd, cwd=ROOT, env=stack.env(), capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def children(stack: Stack, fleet_id: str) -> list[dict[str, Any]]:
    runs = api(
        stack,
        "POST",
        "/flow_runs/filter",
        {"flow_runs": {"tags": {"all_": [f"fleet-{fleet_id}"]}}, "limit": 200},
    )
    return [run for run in runs if run["name"] != f"fleet-{fleet_id}"]


def batches(stack: Stack, fleet_id: str) -> list[dict[str, Any]]:
    """The fleet's migrate-host-batch runs (one per host and stage, more after a crash)."""
    return list(
        api(
            stack,
            "POST",
            "/flow_runs/filter",
            {"flow_runs": {"tags": {"all_": [f"fleet-{fleet_id}-batch"]}}, "limit": 200},
        )
    )


def _counts(out: str | bytes) -> dict[str, int]:
    """The counts `fleet run --json` prints (stdout), wherever the error line (stderr) fell."""
    text = out.decode() if isinstance(out, bytes) else out
    counts: dict[str, int] = json.loads([line for line in text.splitlines() if line.startswith("{")][-1])
    return counts


def _per_database(runs: list[dict[str, Any]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for run in runs:
        found.setdefault(run["parameters"]["database"], []).append(run["state_type"])
    return found


def test_every_database_is_migrated_by_exactly_one_run_and_a_rerun_is_a_noop(
    stack: Stack, workdir: Path
) -> None:
    manifest = _manifest(workdir, "all-good")
    code, out = fleet(stack, manifest, "all-good", "--waves", "50%,100%", "--json")
    assert code == 0, out
    assert _counts(out) == {"completed": 6}
    dbs = sorted((workdir / "all-good").rglob("*.db"))
    assert len(dbs) == 6 and all(has_fleet_index(db) for db in dbs)
    runs = _per_database(children(stack, "all-good"))
    assert {k: v for k, v in runs.items()} == {str(db): ["COMPLETED"] for db in dbs}
    # One batch run per host and stage: the canary's host, then the two waves' hosts.
    found = batches(stack, "all-good")
    assert all(run["state_type"] == "COMPLETED" for run in found)
    assert sum(len(run["parameters"]["databases"]) for run in found) == 6 and len(found) <= 7
    assert all(r["deployment_id"] is None for r in children(stack, "all-good"))  # tasks of a batch
    code, out = fleet(stack, manifest, "all-good", "--json")
    assert code == 0, out
    assert len(children(stack, "all-good")) == 6  # nothing started again
    assert len(batches(stack, "all-good")) == len(found)


def test_the_per_database_dispatch_runs_each_database_as_a_run_of_its_own(
    stack: Stack, workdir: Path
) -> None:
    manifest = _manifest(workdir, "per-database", per_host=1)
    code, out = fleet(stack, manifest, "per-database", "--dispatch", "per-database", "--json")
    assert code == 0, out
    assert _counts(out) == {"completed": 3}
    runs = children(stack, "per-database")
    assert sorted(r["parameters"]["database"] for r in runs) == sorted(
        str(db) for db in (workdir / "per-database").rglob("*.db")
    )
    assert all(r["parent_task_run_id"] is not None and r["deployment_id"] for r in runs)
    assert batches(stack, "per-database") == []


def test_a_failing_canary_halts_the_fleet_and_is_rolled_back(stack: Stack, workdir: Path) -> None:
    manifest = _manifest(workdir, "bad-canary", bad=("a/000",))
    code, out = fleet(stack, manifest, "bad-canary", "--canary", "1")
    assert code == 1, out
    assert "Fleet bad-canary halted in the canary" in out
    assert "Try: fix what failed (see the table artifact), then resume with: liteshift fleet run" in out
    runs = children(stack, "bad-canary")
    assert [(r["parameters"]["database"], r["state_type"]) for r in runs] == [
        (str(workdir / "bad-canary" / "a" / "000.db"), "FAILED")
    ]
    assert not any(has_fleet_index(db) for db in (workdir / "bad-canary").rglob("*.db"))


def test_the_failure_threshold_stops_the_waves(stack: Stack, workdir: Path) -> None:
    manifest = _manifest(workdir, "threshold", per_host=3, bad=("a/001", "b/001"))
    code, out = fleet(
        stack, manifest, "threshold", "--canary", "1", "--waves", "50%,100%", "--max-failures", "2"
    )
    plan = json.loads((workdir / "plans" / "fleet-threshold.json").read_text())
    wave1 = set(plan["waves"][0])
    started = {
        f"{r['parameters']['expected_host']}:{r['parameters']['database']}"
        for r in children(stack, "threshold")
    }
    if {"a:" + str(workdir / "threshold/a/001.db"), "b:" + str(workdir / "threshold/b/001.db")} <= wave1:
        assert code == 1 and "halted in the wave 1" in out, out
        assert started == set(plan["canary"]) | wave1  # wave 2 never started
    else:  # the round-robin put a bad one in wave 2: the fleet halts after it instead
        assert code == 1 and "halted in the wave 2" in out, out


def test_refused_and_deferred_are_not_failures_a_resume_finishes_the_deferred_and_retry_failed_the_fixed(
    stack: Stack, workdir: Path
) -> None:
    manifest = _manifest(workdir, "mixed")
    corrupt = workdir / "mixed" / "b" / "001.db"
    corrupt.write_bytes(b"not a database, just bytes " * 100)
    locked = workdir / "mixed" / "c" / "001.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(600)",
            str(locked),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        canary = f"a:{workdir / 'mixed' / 'a' / '000.db'}"
        code, out = fleet(stack, manifest, "mixed", "--canary", canary, "--max-failures", "1", "--json")
        assert code == 5, out  # not a failure, and not a success either
        assert _counts(out) == {"completed": 4, "refused": 1, "deferred": 1}
        assert (
            "Error: Fleet mixed finished with 2 of 6 databases not migrated: 1 refused, 1 deferred\n" in out
        )
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(30)
    status = subprocess.run(
        [*fleet_command("status", manifest, "mixed"), "--json"],
        cwd=ROOT,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    shown = {r["database"]: r for r in json.loads(status.stdout.strip().splitlines()[-1])["databases"]}
    assert shown[f"b:{corrupt}"]["state"] == "refused"
    assert "is not a SQLite database" in shown[f"b:{corrupt}"]["error"], shown[f"b:{corrupt}"]
    assert shown[f"c:{locked}"]["state"] == "deferred" and "locked" in shown[f"c:{locked}"]["error"]
    code, out = fleet(stack, manifest, "mixed", "--json")
    assert code == 5, out
    assert _counts(out) == {"completed": 5, "refused": 1}
    assert "--fleet-id mixed --retry-failed (once the refused and failed ones are fixed)" in out
    runs = _per_database(children(stack, "mixed"))
    assert runs[str(locked)] == ["COMPLETED", "FAILED"] or sorted(runs[str(locked)]) == [
        "COMPLETED",
        "FAILED",
    ]
    assert runs[str(corrupt)] == ["FAILED"]  # refused once, not retried
    assert has_fleet_index(locked)
    corrupt.unlink()
    fleet_db(corrupt)  # a person put a good copy back
    code, out = fleet(stack, manifest, "mixed", "--retry-failed", "--json")
    assert code == 0, out
    assert _counts(out) == {"completed": 6}
    assert sorted(_per_database(children(stack, "mixed"))[str(corrupt)]) == ["COMPLETED", "FAILED"]
    assert has_fleet_index(corrupt)


def test_a_run_that_reaches_the_wrong_host_is_refused(stack: Stack, workdir: Path) -> None:
    """Host d's queue is served by a worker that says it is host e."""
    create_queues(stack, ["liteshift-d"])
    args = [stack.prefect, "worker", "start", "--pool", "liteshift", "--work-queue", "liteshift-d"]
    start(stack, "worker-impostor", args, env={"LITESHIFT_HOST_ID": "e"})
    pidfile = stack.run_dir / "worker-impostor.pid"
    try:
        fleet_db(workdir / "wrong" / "d" / "000.db")
        manifest = workdir / "wrong.toml"
        manifest.write_text(f'migrations = "{MIGRATIONS}"\n[hosts.d]\npaths = ["{workdir}/wrong/d/*.db"]\n')
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the impostor polls its queue before the fleet checks it
            code, out = fleet(stack, manifest, "wrong", "--canary", "0", "--json")
            if "have no live worker" not in out:
                break
            time.sleep(2)
        assert code == 5, out
        assert _counts(out) == {"refused": 1}
        [run] = children(stack, "wrong")
        assert "WrongHost: This run is for host 'd' but runs on" in run["state"]["message"]
        assert not has_fleet_index(workdir / "wrong" / "d" / "000.db")
    finally:
        stop(stack, "worker-impostor")
        assert not pidfile.exists()


def test_the_parent_killed_after_a_wave_resumes_without_a_second_run(stack: Stack, workdir: Path) -> None:
    """Killed after the canary with host c's batch run still waiting for a worker (c's worker is
    stopped with SIGSTOP meanwhile): the resume adopts that batch, waits for it instead of starting
    its databases again, and starts only what is missing."""
    manifest = _manifest(workdir, "killed", per_host=3)
    proc = fleet(stack, manifest, "killed", "--canary", "1", "--waves", "30%,100%", wait=False)
    plan_file = workdir / "plans" / "fleet-killed.json"
    worker_c = int(stack.pidfile("worker-c").read_text())

    def until(what: str, ready: Callable[[list[dict[str, Any]]], bool]) -> None:
        deadline = time.monotonic() + 300
        while not ready(children(stack, "killed")):
            assert time.monotonic() < deadline, f"never saw {what}"
            time.sleep(0.5)

    until(
        "the canary completed",
        lambda runs: plan_file.exists() and any(r["state_type"] == "COMPLETED" for r in runs),
    )
    os.kill(worker_c, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 300
        while not any(
            "host-c" in r["tags"] and r["state_type"] == "SCHEDULED" for r in batches(stack, "killed")
        ):
            assert time.monotonic() < deadline, "never saw a batch of host c waiting"
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        os.kill(worker_c, signal.SIGCONT)
    code, out = fleet(stack, manifest, "killed", "--json")
    assert code == 0, out
    assert _counts(out) == {"completed": 9}
    runs = _per_database(children(stack, "killed"))
    assert len(runs) == 9 and all(states == ["COMPLETED"] for states in runs.values()), runs
    waited = [r for r in batches(stack, "killed") if "host-c" in r["tags"]]
    assert all(r["state_type"] == "COMPLETED" for r in waited), waited  # adopted, none cancelled


def test_a_worker_killed_mid_wave_loses_nothing_and_a_resume_completes_the_fleet(
    stack: Stack, workdir: Path
) -> None:
    """SIGKILL host b's worker (and the batch run it started) while one of its databases is being
    migrated: the zombie automation (its window shortened here) marks the batch Crashed, the fleet
    marks the database run it left Running Crashed too and hands b's unfinished databases to a new
    batch once, on b's queue, where a new worker finishes them. Each database is migrated once."""
    fast = workdir / "zombie-fast.yaml"
    spec = (
        (ROOT / "deployments/automations/zombie-runs.yaml").read_text().replace("within: 600", "within: 45")
    )
    fast.write_text(spec)
    install_automation(stack, fast)
    manifest = _manifest(workdir, "worker-killed", per_host=2)
    args = ("--canary", "0", "--pending-timeout", "90", "--json")
    proc = fleet(stack, manifest, "worker-killed", *args, wait=False)
    victim = None
    deadline = time.monotonic() + 180
    while victim is None and time.monotonic() < deadline:
        victim = next(
            (
                r
                for r in children(stack, "worker-killed")
                if "host-b" in r["tags"] and r["state_type"] == "RUNNING"
            ),
            None,
        )
        time.sleep(0.2)
    assert victim is not None, "no run of host b was ever seen running"
    worker = int(stack.pidfile("worker-b").read_text())
    os.killpg(worker, signal.SIGKILL)
    stop(stack, "worker-b")  # reaps it and removes the pid file
    time.sleep(2)
    start_workers(stack, {"b": "liteshift-b"})
    out, _ = proc.communicate(timeout=600)
    first = _counts(out)
    assert proc.returncode == (0 if set(first) == {"completed"} else 5), out
    assert first.get("failed", 0) == 0 and first["completed"] >= 5, first
    code, out = fleet(stack, manifest, "worker-killed", "--json")  # the resume
    assert code == 0, out
    assert _counts(out) == {"completed": 6}
    runs = _per_database(children(stack, "worker-killed"))
    assert sorted(runs[victim["parameters"]["database"]]) == ["COMPLETED", "CRASHED"]
    assert all(states.count("COMPLETED") == 1 for states in runs.values()), runs
    assert all(has_fleet_index(db) for db in (workdir / "worker-killed").rglob("*.db"))


def test_approval_after_the_canary_pauses_the_fleet_until_a_person_answers(
    stack: Stack, workdir: Path
) -> None:
    manifest = _manifest(workdir, "approved", per_host=1)
    proc = fleet(stack, manifest, "approved", "--canary", "1", "--approve-after-canary", "--json", wait=False)
    parent = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        found = api(stack, "POST", "/flow_runs/filter", {"flow_runs": {"name": {"any_": ["fleet-approved"]}}})
        parent = next(iter(found), None)
        if parent and parent["state_type"] == "PAUSED":
            break
        time.sleep(0.5)
    assert parent is not None and parent["state_type"] == "PAUSED", parent
    keyset = parent["state"]["state_details"]["run_input_keyset"]
    description = api(stack, "GET", f"/flow_runs/{parent['id']}/input/{keyset['description']}")
    assert description.startswith("# Fleet approved: the canary finished") and ": completed" in description
    assert len(children(stack, "approved")) == 1  # only the canary ran while paused
    api(
        stack, "POST", f"/flow_runs/{parent['id']}/resume", {"run_input": {"approve": True, "comment": "e2e"}}
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert _counts(out) == {"completed": 3}


def test_a_queue_without_a_live_worker_is_refused_before_anything_starts(stack: Stack, workdir: Path) -> None:
    fleet_db(workdir / "unserved" / "z" / "000.db")
    manifest = workdir / "unserved.toml"
    manifest.write_text(f'migrations = "{MIGRATIONS}"\n[hosts.z]\npaths = ["{workdir}/unserved/z/*.db"]\n')
    code, out = fleet(stack, manifest, "unserved")
    assert code == 2, out
    assert (
        "Error: Some hosts' work queues have no live worker: liteshift-z (does not exist); their runs "
        "would wait for ever; nothing was started"
    ) in out
    assert children(stack, "unserved") == []


def test_an_inventory_host_lists_its_own_databases_in_a_run_on_its_queue(stack: Stack, workdir: Path) -> None:
    for i in range(3):
        fleet_db(workdir / "inventoried" / "c" / f"{i:03d}.db")
    manifest = workdir / "inventoried.toml"
    manifest.write_text(
        f'migrations = "{MIGRATIONS}"\n[hosts.c]\n'
        f'paths = ["{workdir}/inventoried/c/*.db"]\ninventory = true\n'
    )
    cmd = [*fleet_command("plan", manifest, "inventoried"), "--json"]  # plans in workdir / "plans"
    done = subprocess.run(cmd, cwd=ROOT, env=stack.env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads(done.stdout.strip().splitlines()[-1])
    assert [d["database"] for d in plan["databases"]] == [
        f"c:{workdir / 'inventoried' / 'c' / f'{i:03d}.db'}" for i in range(3)
    ]
    found = api(stack, "POST", "/flow_runs/filter", {"flow_runs": {"name": {"any_": ["inventory-c"]}}})
    assert [run["state_type"] for run in found] == ["COMPLETED"]
