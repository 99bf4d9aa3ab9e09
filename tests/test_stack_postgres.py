"""make up on PostgreSQL (LITESHIFT_SERVER_DB=postgres) and one worker per fleet host: real processes,
loopback only, every PID checked gone afterwards."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rest import api
from stack import (
    POOL,
    Stack,
    StackError,
    alive,
    down,
    pg_bin,
    pg_data_dir,
    pg_url,
    start_postgres,
    stop_postgres,
    up,
)

from liteshift.flows.runtime import free_port, healthy


def _have_postgres() -> bool:
    try:
        pg_bin("initdb"), pg_bin("pg_ctl")
    except StackError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _have_postgres(),
    reason="PostgreSQL's initdb/pg_ctl not found (apt-get install postgresql; .ci/run installs it)",
)


@pytest.fixture
def cleanup() -> Iterator[list[Stack]]:
    """Stacks to take down and whose PostgreSQL data dir to delete, also when a test fails."""
    stacks: list[Stack] = []
    yield stacks
    for stack in stacks:
        down(stack)
        shutil.rmtree(pg_data_dir(stack), ignore_errors=True)


def psql(port: int, sql: str, database: str = "postgres") -> str:
    """One query through TCP on 127.0.0.1, as the cluster's superuser."""
    args = ["-X", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", database, "-tAc", sql]
    return subprocess.run([pg_bin("psql"), *args], capture_output=True, text=True, check=True).stdout.strip()


def environ(pid: int) -> dict[str, str]:
    """The environment a process was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def pid_of(stack: Stack, name: str) -> int:
    return int(stack.pidfile(name).read_text())


def test_postgres_starts_on_loopback_restarts_on_its_data_and_stops_by_pid(
    tmp_path: Path, cleanup: list[Stack]
) -> None:
    stack = Stack(run_dir=tmp_path / "run", port=free_port(), root=tmp_path)
    cleanup.append(stack)
    port = start_postgres(stack)
    pid = pid_of(stack, "postgres")
    data = pg_data_dir(stack)
    assert alive(pid) and (data / "postmaster.pid").read_text().split("\n")[0] == str(pid)
    assert psql(port, "show listen_addresses") == "127.0.0.1"
    assert psql(port, "select current_database()", "prefect") == "prefect"
    assert stop_postgres(stack) == f"pid {pid} stopped (pg_ctl stop -m fast)"
    assert not alive(pid) and not stack.pidfile("postgres").exists()

    initialised = (data / "PG_VERSION").stat().st_mtime_ns
    port = start_postgres(stack)  # the same data dir: no initdb, the database is already there
    second = pid_of(stack, "postgres")
    assert (data / "PG_VERSION").stat().st_mtime_ns == initialised
    assert psql(port, "select 1", "prefect") == "1"
    assert stop_postgres(stack) == f"pid {second} stopped (pg_ctl stop -m fast)"
    assert not alive(second)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 45) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(0.5)


@pytest.mark.e2e
def test_up_on_postgres_starts_one_worker_per_host_on_its_queue(tmp_path: Path, cleanup: list[Stack]) -> None:
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(
        '[hosts.alpha]\nqueue = "alpha-queue"\npaths = ["alpha/*.db"]\n[hosts.beta]\npaths = ["beta/*.db"]\n'
    )
    queues = {"alpha": "alpha-queue", "beta": "liteshift-beta"}
    stack = Stack(
        run_dir=tmp_path / "run",
        port=free_port(),
        worker_poll_s=1,
        server_db="postgres",
        fleet_manifest=manifest,
    )
    cleanup.append(stack)
    up(stack)
    assert healthy(stack.api_url, 5)
    pids = {name: pid_of(stack, name) for name in ("postgres", "server", "worker-alpha", "worker-beta")}

    # The server's database is PostgreSQL: its tables are in `prefect`, no SQLite file in its home.
    server_env = environ(pids["server"])
    port = int(server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].rsplit(":", 1)[1].split("/")[0])
    assert server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == pg_url(port)
    assert psql(port, "select count(*) from pg_tables where tablename = 'flow_run'", "prefect") == "1"
    assert not (stack.run_dir / "prefect-home" / "prefect.db").exists()

    # Each worker has its host in its environment (and nothing of the server's) and polls its queue.
    for host in queues:
        env = environ(pids[f"worker-{host}"])
        assert env["LITESHIFT_HOST_ID"] == host and "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in env
    assert "LITESHIFT_HOST_ID" not in server_env

    def workers() -> set[str]:
        return {w["name"] for w in api(stack, "POST", f"/work_pools/{POOL}/workers/filter", {})}

    def polled() -> dict[str, bool]:
        queues = api(stack, "POST", f"/work_pools/{POOL}/queues/filter", {})
        return {q["name"]: q["last_polled"] is not None for q in queues}

    wait_for(lambda: workers() >= {"liteshift-alpha", "liteshift-beta"}, "both workers registered")
    wait_for(lambda: all(polled().get(q) for q in queues.values()), "both queues polled")
    assert polled()["default"] is False  # the workers poll their own queues only

    down(stack)
    assert not [name for name, pid in pids.items() if alive(pid)]
    assert not list(stack.run_dir.glob("*.pid"))
