"""make up / make down's process handling: PID files, and TERM then KILL for what ignores TERM."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import stack as stack_module
from stack import (
    Stack,
    StackError,
    alive,
    main,
    pg_bin,
    pg_data_dir,
    port_free,
    read_hosts,
    start,
    start_workers,
    stop,
    stop_postgres,
    worker_command,
)

from liteshift.flows.runtime import free_port

IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


def _stack(tmp_path) -> Stack:
    return Stack(run_dir=tmp_path / "run", port=free_port(), root=tmp_path)


def _wait_ready(log, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while "ready" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "child never started"
        time.sleep(0.05)


def test_start_writes_pid_and_log_and_stop_terminates(tmp_path):
    stack = _stack(tmp_path)
    pid = start(
        stack, "sleeper", [sys.executable, "-c", "print('ready', flush=True); import time; time.sleep(60)"]
    )
    assert stack.pidfile("sleeper").read_text().strip() == str(pid)
    _wait_ready(stack.run_dir / "sleeper.log")
    assert stop(stack, "sleeper") == f"pid {pid} stopped (TERM)"
    assert not alive(pid) and not stack.pidfile("sleeper").exists()
    assert stop(stack, "sleeper") == "no pid file"


def test_stop_escalates_to_kill_when_term_is_ignored(tmp_path):
    stack = _stack(tmp_path)
    pid = start(stack, "stubborn", [sys.executable, "-c", IGNORES_TERM])
    _wait_ready(stack.run_dir / "stubborn.log")
    started = time.monotonic()
    assert stop(stack, "stubborn", grace_s=1.0) == f"pid {pid} killed (KILL after TERM was ignored)"
    assert 1.0 <= time.monotonic() - started < 10
    assert not alive(pid)


def test_port_probe(tmp_path):
    assert port_free(free_port())


def test_start_gives_extra_variables_to_that_process_only(tmp_path):
    stack = _stack(tmp_path)
    code = "import os; print('ready', os.environ.get('LITESHIFT_HOST_ID'), flush=True)"
    start(stack, "with", [sys.executable, "-c", code], env={"LITESHIFT_HOST_ID": "alpha"})
    start(stack, "without", [sys.executable, "-c", code])
    for name in ("with", "without"):
        _wait_ready(stack.run_dir / f"{name}.log")
    assert (stack.run_dir / "with.log").read_text().split() == ["ready", "alpha"]
    assert (stack.run_dir / "without.log").read_text().split() == ["ready", "None"]
    assert "LITESHIFT_HOST_ID" not in stack.env()


def test_read_hosts_defaults_each_queue_to_liteshift_host(tmp_path):
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(
        '[hosts.alpha]\nqueue = "q-alpha"\npaths = ["*.db"]\n\n[hosts.db-2]\npaths = ["*.db"]\n'
    )
    assert read_hosts(manifest) == {"alpha": "q-alpha", "db-2": "liteshift-db-2"}


def test_read_hosts_refuses_what_liteshift_fleet_refuses(tmp_path):
    manifest = tmp_path / "fleet.toml"
    manifest.write_text("[defaults]\nx = 1\n")
    with pytest.raises(StackError) as exc:
        read_hosts(manifest)
    assert str(exc.value) == (
        f"Unknown key defaults in manifest {manifest}: the manifest knows only hosts, migrations. "
        "Try: remove it; the manifest knows only hosts, migrations"
    )


def test_start_workers_refuses_a_host_name_unfit_for_a_file_name_before_starting_anything(tmp_path):
    stack = _stack(tmp_path)
    with pytest.raises(StackError) as exc:
        start_workers(stack, {"ok": "q", "../etc": "q2"})
    assert str(exc.value) == "host name '../etc' is not usable: use letters, digits, '.', '_' and '-'"
    assert not stack.run_dir.exists()


def test_missing_postgresql_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(stack_module, "PG_LIB", tmp_path / "postgresql")
    with pytest.raises(StackError) as exc:
        pg_bin("initdb")
    assert str(exc.value) == (
        f"PostgreSQL's initdb was not found on PATH nor in {tmp_path / 'postgresql'}/*/bin; install "
        "Debian's package (apt-get install postgresql) or start the server on SQLite "
        "(unset LITESHIFT_SERVER_DB)"
    )


def test_pg_bin_takes_the_newest_debian_version(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(stack_module, "PG_LIB", tmp_path)
    for version in ("9.6", "15", "16"):
        (tmp_path / version / "bin").mkdir(parents=True)
        (tmp_path / version / "bin" / "pg_ctl").touch()
    assert pg_bin("pg_ctl") == str(tmp_path / "16" / "bin" / "pg_ctl")


def test_pg_data_dir_is_where_the_postgres_user_can_reach_it(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    stack = Stack(run_dir=private / "run", port=1)
    if os.geteuid() == 0:
        # The postgres user cannot cross a 0700 directory: a stable place in /var/tmp instead.
        assert pg_data_dir(stack).parent == Path("/var/tmp")
        assert pg_data_dir(stack).name.startswith("liteshift-pg-")
        assert pg_data_dir(stack) == pg_data_dir(Stack(run_dir=private / "run", port=2))
        assert pg_data_dir(stack) != pg_data_dir(Stack(run_dir=private / "other", port=1))
    else:
        assert pg_data_dir(stack) == private / "run" / "postgres"


def test_stop_postgres_stops_by_pid_when_the_data_dir_names_another_postmaster(tmp_path):
    stack = _stack(tmp_path)
    # Whatever postgres.pid names, pg_ctl is only used when the data dir's postmaster.pid agrees.
    pid = start(
        stack, "postgres", [sys.executable, "-c", "print('ready', flush=True); import time; time.sleep(60)"]
    )
    _wait_ready(stack.run_dir / "postgres.log")
    assert stop_postgres(stack) == f"pid {pid} stopped (TERM)"
    assert not alive(pid) and not stack.pidfile("postgres").exists()
    assert stop_postgres(stack) == "no pid file"


def test_main_refuses_an_unknown_server_db(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LITESHIFT_SERVER_DB", "mysql")
    with pytest.raises(SystemExit) as exc:
        main(["down", "--run-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert (
        "--server-db (or LITESHIFT_SERVER_DB) is 'mysql': use sqlite or postgres" in capsys.readouterr().err
    )


def test_each_worker_runs_at_most_its_limit_of_flow_runs(tmp_path):
    stack = Stack(run_dir=tmp_path / "run", port=free_port(), root=tmp_path, worker_limit=3)
    assert worker_command(stack)[1:] == ["worker", "start", "--pool", "liteshift", "--limit", "3"]
    assert _stack(tmp_path).worker_limit == 4


@pytest.mark.parametrize("value", ["0", "four", "-1"])
def test_main_refuses_a_worker_limit_that_is_not_a_positive_whole_number(
    tmp_path, monkeypatch, capsys, value
):
    monkeypatch.setenv("LITESHIFT_WORKER_LIMIT", value)
    with pytest.raises(SystemExit) as exc:
        main(["down", "--run-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert (
        f"--worker-limit (or LITESHIFT_WORKER_LIMIT) is {value!r}: use a whole number >= 1"
        in capsys.readouterr().err
    )
