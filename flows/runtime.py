"""Prefect settings for a command-line run: only what a run needs, and a quiet console.

Where the flow run is recorded, cheapest first (bench/RESULTS.md has the measured figures):
1. PREFECT_API_URL when the user set it;
2. a Prefect server already answering on this machine (LITESHIFT_LOCAL_API, default
   http://127.0.0.1:4200/api, the address `prefect server start` uses): its UI shows the run live,
   and no second API process writes the same PREFECT_HOME database;
3. otherwise an embedded API server for this one command, started before anything else is
   imported so its start-up overlaps ours. It is the process Prefect's own ephemeral mode starts
   (`uvicorn prefect.server.api.server:create_app`, no UI), on the same PREFECT_HOME database,
   so `prefect server start` shows the run afterwards exactly as it would have.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from liteshift.core.errors import MigrationError

DEFAULTS = {
    # The API server tries to send telemetry to a network a maintenance host may not reach.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The console shows liteshift's own summary; the full logs still go to the Prefect API / UI.
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL": "CRITICAL",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL": "CRITICAL",
}
LOCAL_API = "http://127.0.0.1:4200/api"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The server Prefect's own ephemeral mode starts (prefect.server.api.server.SubprocessASGIServer).
UVICORN = [sys.executable, "-m", "uvicorn", "--lifespan", "on", "--factory"]
APP = "prefect.server.api.server:create_app"
EMBEDDED_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def free_port() -> int:
    """A port the kernel says is free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(api_url: str, timeout_s: float) -> bool:
    """True when a Prefect API answers 200 on its /health endpoint."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def configure_prefect(verbose: bool = False) -> None:
    """Set defaults before Prefect is imported; a value the user exported always wins."""
    for key, value in DEFAULTS.items():
        if verbose and "CONSOLE" in key:
            continue
        os.environ.setdefault(key, value)


def _home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()


def _start_embedded(port: int) -> subprocess.Popen[bytes]:
    _home().mkdir(parents=True, exist_ok=True)
    with (_home() / "liteshift-api.log").open("wb") as log:
        return subprocess.Popen(
            [*UVICORN, APP, "--host", "127.0.0.1", "--port", str(port), "--log-level", "error"],
            env={**os.environ, **EMBEDDED_ENV},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the CLI dies, even by SIGKILL, so no server is orphaned."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_healthy(proc: subprocess.Popen[bytes], api_url: str) -> bool:
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 20))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if healthy(api_url, 1.0):
            return True
        time.sleep(0.02)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets the server flush the run's events (task runs, logs) before it exits."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Api:
    """The Prefect API one command uses: how it was found, and its embedded server if any."""

    def __init__(self, mode: str, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.mode = mode
        self.proc = proc

    def wait(self) -> None:
        """Block until the embedded server answers (call it after the heavy imports)."""
        if self.proc is not None and not _wait_healthy(self.proc, os.environ["PREFECT_API_URL"]):
            raise MigrationError(
                "The embedded Prefect API did not start",
                f"see {_home() / 'liteshift-api.log'}",
                "run 'prefect server start' and run again (liteshift uses a local server when one "
                "answers), or set PREFECT_API_URL",
            )


def connect_api() -> Api:
    """Choose the API before Prefect is imported: the configured one, a local one, or our own."""
    if "prefect" in sys.modules:  # called in-process (tests): Prefect's settings already decided
        return Api("in-process")
    if os.environ.get("PREFECT_API_URL"):
        return Api("configured")
    local = os.environ.get("LITESHIFT_LOCAL_API", LOCAL_API)
    if local and healthy(local, 0.3):
        os.environ["PREFECT_API_URL"] = local
        return Api("local")
    port = free_port()
    proc = _start_embedded(port)
    # Registered before Prefect registers its own exit handlers, so it runs after them: Prefect
    # first sends its last logs and events, then the server stops and writes them down.
    atexit.register(_stop, proc)
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    return Api("embedded", proc)


@contextmanager
def command_settings(api: Api) -> Iterator[None]:
    """Settings for a flow run started from the command line, applied around the call.

    With the embedded API, flow-run heartbeats are off unless PREFECT_FLOWS_HEARTBEAT_FREQUENCY is
    exported: a sync flow joins its heartbeat thread, which sleeps in 1 s steps, so every run ended
    up to 1 s later (0.85 s measured), and the embedded server dies with the command, so no
    automation could ever read them. Against a real server they stay as configured: there they
    let the zombie-run automation mark a killed run Crashed.
    """
    if api.mode != "embedded" or "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in os.environ:
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def is_deployment_run() -> bool:
    """True inside a flow run started from a deployment (or its subflow); a CLI run has no deployment."""
    from prefect.runtime import deployment

    return bool(deployment.id)
