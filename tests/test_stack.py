"""make up / make down's process handling: PID files, and TERM then KILL for what ignores TERM."""

from __future__ import annotations

import sys
import time

from stack import Stack, alive, port_free, start, stop

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
