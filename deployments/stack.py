"""`make up` / `make down`: a local Prefect server, a process work pool and worker, and the deployments.

Every process is started in its own session, its PID written to the run directory (`.run/` by
default) and its output to a log there; `down` stops exactly those PIDs: TERM to the process
group, a grace period (a worker may ignore TERM for 20 s and more), then KILL. The server
listens on 127.0.0.1 only. The e2e tests drive the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from liteshift.flows.runtime import healthy

ROOT = Path(__file__).resolve().parent.parent
POOL = "liteshift"
PREFECT_FILE = Path("deployments/prefect.yaml")
ZOMBIE_AUTOMATION = Path("deployments/automations/zombie-runs.yaml")


class StackError(RuntimeError):
    """A process of the local stack could not be started or stopped."""


@dataclass(frozen=True)
class Stack:
    """Where the local stack lives and how its processes reach each other."""

    run_dir: Path
    port: int
    root: Path = ROOT
    worker_poll_s: int = 5
    extra_env: tuple[tuple[str, str], ...] = ()  # more variables for every process (tests)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def prefect(self) -> str:
        """The project venv's prefect, so the worker's flow runs import liteshift."""
        return str(Path(sys.executable).with_name("prefect"))

    def env(self) -> dict[str, str]:
        """The environment of every process: its own PREFECT_HOME, never the user's ~/.prefect."""
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str(self.run_dir / "prefect-home"),
            PREFECT_API_URL=self.api_url,
            PREFECT_UI_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_WORKER_QUERY_SECONDS=str(self.worker_poll_s),
            LITESHIFT_ROOT=str(self.root),
        )
        env.update(self.extra_env)
        return env

    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"


def port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def alive(pid: int) -> bool:
    """True when pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def start(stack: Stack, name: str, args: list[str]) -> int:
    """Start one process in its own session with output to <name>.log; write <name>.pid."""
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    with (stack.run_dir / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            args,
            cwd=stack.root,
            env=stack.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    stack.pidfile(name).write_text(f"{proc.pid}\n")
    return proc.pid


def stop_pid(pid: int, grace_s: float = 30.0) -> str:
    """TERM the process group led by pid, wait up to grace_s, then KILL it; say what it took."""
    if not alive(pid):
        return "not running"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not alive(pid):
            return "stopped (TERM)"
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not alive(pid):
            break
        time.sleep(0.1)
    return "killed (KILL after TERM was ignored)"


def _reap(pid: int) -> None:
    """Collect the exit status when pid is our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(stack: Stack, name: str, grace_s: float = 30.0) -> str:
    """Stop the process recorded in <name>.pid, if any, and remove the file."""
    path = stack.pidfile(name)
    if not path.exists():
        return "no pid file"
    pid = int(path.read_text().strip())
    outcome = stop_pid(pid, grace_s)
    path.unlink()
    return f"pid {pid} {outcome}"


def wait_healthy(stack: Stack, timeout_s: float = 90.0) -> float:
    """Poll /api/health until the server answers; return the seconds it took."""
    start_t = time.monotonic()
    while time.monotonic() - start_t < timeout_s:
        pid = int(stack.pidfile("server").read_text())
        if not alive(pid):
            raise StackError(f"prefect server exited; see {stack.run_dir / 'server.log'}")
        if healthy(stack.api_url, 2.0):
            return time.monotonic() - start_t
        time.sleep(0.5)
    raise StackError(f"prefect server not healthy after {timeout_s:g} s; see {stack.run_dir / 'server.log'}")


def prefect_cli(stack: Stack, *args: str, timeout_s: float = 300.0) -> str:
    """Run one prefect command against the stack's server; raise StackError with its output."""
    proc = subprocess.run(
        [stack.prefect, *args],
        cwd=stack.root,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise StackError(f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def install_automation(stack: Stack, path: Path = ZOMBIE_AUTOMATION) -> str:
    """Create the automation in path, replacing older automations of the same name."""
    import yaml

    name = str(yaml.safe_load((stack.root / path).read_text())["name"])
    for automation_id in _automation_ids(stack, name):
        prefect_cli(stack, "--no-prompt", "automation", "delete", "--id", automation_id)
    return prefect_cli(stack, "automation", "create", "--from-file", str(path))


def install_alerts(stack: Stack, url: str | None = None, silent_within_s: int | None = None) -> str:
    """The liteshift-alerts webhook block and the health automations, when a webhook is given
    (argument, else $LITESHIFT_ALERT_WEBHOOK); without one, say how to add them later."""
    url = url or os.environ.get("LITESHIFT_ALERT_WEBHOOK")
    if not url:
        return "health alerts not installed: set LITESHIFT_ALERT_WEBHOOK=URL and run 'make automations'"
    code = (
        "import sys; from pathlib import Path; from liteshift.alerts import install_alerting\n"
        "within = int(sys.argv[3]) if sys.argv[3] else None\n"
        "print(' '.join(str(i) for i in install_alerting(sys.argv[1], Path(sys.argv[2]), within)))\n"
    )
    args = [url, str(stack.root / "deployments" / "automations"), str(silent_within_s or "")]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=stack.env(), capture_output=True, text=True, cwd=stack.root
    )
    if proc.returncode != 0:
        raise StackError(f"installing the health alerts failed:\n{proc.stdout}{proc.stderr}")
    return f"health alerts installed (automations {proc.stdout.strip()}) posting to {url}"


def _automation_ids(stack: Stack, name: str) -> list[str]:
    """Ids of automations of that name, read through the stack's API."""
    code = (
        "import sys; from prefect import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    print(' '.join(str(a.id) for a in c.read_automations_by_name(sys.argv[1])))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, name], env=stack.env(), capture_output=True, text=True, check=True
    )
    return proc.stdout.split()


def up(stack: Stack) -> None:
    """Start the server, create the pool, deploy, install the automation, start the worker."""
    server_pid = stack.pidfile("server")
    if server_pid.exists() and alive(int(server_pid.read_text())):
        raise StackError(f"already up (pid file {server_pid}); run 'make down' first")
    if not port_free(stack.port):
        raise StackError(f"port {stack.port} on 127.0.0.1 is taken; set PREFECT_PORT to another port")
    start(
        stack, "server", [stack.prefect, "server", "start", "--host", "127.0.0.1", "--port", str(stack.port)]
    )
    try:
        print(f"server healthy in {wait_healthy(stack):.1f} s")
        prefect_cli(stack, "work-pool", "create", POOL, "--type", "process", "--overwrite")
        prefect_cli(stack, "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE))
        install_automation(stack)
        print(install_alerts(stack))
        start(stack, "worker", [stack.prefect, "worker", "start", "--pool", POOL])
    except BaseException:
        down(stack)
        raise


def down(stack: Stack) -> None:
    """Stop the worker, then the server, by their recorded PIDs."""
    for name in ("worker", "server"):
        print(f"{name}: {stop(stack, name)}")


def main(argv: list[str] | None = None) -> int:
    """python deployments/stack.py up|down|automations."""
    p = argparse.ArgumentParser(prog="python deployments/stack.py", description=__doc__)
    p.add_argument("command", choices=["up", "down", "automations"])
    p.add_argument("--run-dir", type=Path, default=ROOT / ".run")
    p.add_argument("--port", type=int, default=int(os.environ.get("PREFECT_PORT", "4200")))
    args = p.parse_args(argv)
    stack = Stack(args.run_dir.resolve(), args.port)
    try:
        if args.command == "up":
            up(stack)
            print(f"Logs and PIDs in {stack.run_dir}. Point your shell at the server with:")
            print(f"export PREFECT_API_URL={stack.api_url}")
        elif args.command == "automations":
            print(install_automation(stack).strip())
            print(install_alerts(stack))
        else:
            down(stack)
    except StackError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
