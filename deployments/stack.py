"""`make up` / `make down`: a local Prefect server, a process work pool and workers, and the deployments.

Every process is started in its own session, its PID written to the run directory (`.run/` by
default) and its output to a log there; `down` stops exactly those PIDs: TERM to the process
group, a grace period (a worker may ignore TERM for 20 s and more), then KILL. The server
listens on 127.0.0.1 only. The e2e tests drive the same functions.

The server's database is SQLite in its PREFECT_HOME, or (`--server-db postgres`) a PostgreSQL
cluster of its own on a free loopback port, started with pg_ctl and stopped after the server.
With a fleet manifest, one worker per host polls that host's work queue.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, get_args

from liteshift.flows.runtime import free_port, healthy

ROOT = Path(__file__).resolve().parent.parent
POOL = "liteshift"
PREFECT_FILE = Path("deployments/prefect.yaml")
ZOMBIE_AUTOMATION = Path("deployments/automations/zombie-runs.yaml")
ServerDb = Literal["sqlite", "postgres"]
# Debian keeps initdb and pg_ctl in versioned directories, off PATH.
PG_LIB = Path("/usr/lib/postgresql")
PG_USER = "postgres"
PG_DATABASE = "prefect"
# A host name becomes part of file names (worker-HOST.pid) and of the worker's name.
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
    server_db: ServerDb = "sqlite"
    fleet_manifest: Path | None = None  # TOML with [hosts.NAME] tables: one worker per host
    worker_limit: int = 4  # flow runs one worker runs at once: the host's own cap, whoever sends them

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


def start(stack: Stack, name: str, args: list[str], env: Mapping[str, str] | None = None) -> int:
    """Start one process in its own session with output to <name>.log; write <name>.pid.

    env: variables for this process only, on top of the stack's."""
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    with (stack.run_dir / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            args,
            cwd=stack.root,
            env={**stack.env(), **(env or {})},
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
    if _wait_gone(pid, grace_s):
        return "stopped (TERM)"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _wait_gone(pid, 5.0)
    return "killed (KILL after TERM was ignored)"


def _wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait up to timeout_s for pid to end; True when it has."""
    deadline = time.monotonic() + timeout_s
    while True:
        _reap(pid)
        if not alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


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


def pg_bin(name: str) -> str:
    """A PostgreSQL program: from PATH, else from the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(PG_LIB.glob(f"*/bin/{name}"), key=lambda p: _version_key(p.parent.parent.name))
    if versions:
        return str(versions[-1])
    raise StackError(
        f"PostgreSQL's {name} was not found on PATH nor in {PG_LIB}/*/bin; install Debian's package "
        "(apt-get install postgresql) or start the server on SQLite (unset LITESHIFT_SERVER_DB)"
    )


def _version_key(name: str) -> tuple[int, str]:
    """Sort '9.6' < '15' < '16'."""
    major = name.split(".")[0]
    return (int(major) if major.isdigit() else -1, name)


def _as_pg_owner() -> list[str]:
    """The prefix that runs a command as the cluster's owner: initdb and postgres refuse root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        raise StackError(
            f"initdb refuses to run as root and there is no '{PG_USER}' user; install Debian's package "
            "(apt-get install postgresql), which creates it, or run make up as a normal user"
        ) from None
    runuser = shutil.which("runuser")
    if not runuser:
        raise StackError("runuser (util-linux) is needed to run PostgreSQL as its own user when root")
    return [runuser, "-u", PG_USER, "--"]


def pg_data_dir(stack: Stack) -> Path:
    """PostgreSQL's data directory: <run dir>/postgres, or /var/tmp when its owner cannot reach that."""
    if os.geteuid() != 0 or _reachable_by_others(stack.run_dir):
        return stack.run_dir / "postgres"
    # As root the cluster belongs to the postgres user, which cannot cross a private directory such
    # as /root or /tmp/pytest-of-root; hashing the run dir keeps the place stable for the next `up`.
    digest = hashlib.sha256(str(stack.run_dir.resolve()).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"liteshift-pg-{digest}"


def _reachable_by_others(path: Path) -> bool:
    """True when every existing directory from / to path lets other users through (o+x)."""
    for d in [path, *path.resolve().parents]:
        with contextlib.suppress(FileNotFoundError):
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
    return True


def _init_pg_data(data: Path) -> None:
    """initdb the cluster once; a later `make up` reuses it (PG_VERSION marks a finished initdb)."""
    if (data / "PG_VERSION").exists():
        return
    as_owner = _as_pg_owner()
    initdb = pg_bin("initdb")
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    if as_owner:
        owner = pwd.getpwnam(PG_USER)
        os.chown(data, owner.pw_uid, owner.pw_gid)
    args = ["-D", str(data), "-U", PG_USER, "--auth=trust", "--encoding=UTF8", "--locale=C"]
    # cwd "/": the postgres user may not be allowed into the caller's working directory.
    proc = subprocess.run([*as_owner, initdb, *args], capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        raise StackError(
            f"initdb {data} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            f"Try: remove {data} and run make up again"
        )


def _postmaster_pid(data: Path) -> int | None:
    """The PID in data/postmaster.pid's first line, while PostgreSQL runs there."""
    try:
        return int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None


def start_postgres(stack: Stack) -> int:
    """Start PostgreSQL on a free loopback port, create the prefect database, write postgres.pid;
    return the port."""
    data = pg_data_dir(stack)
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    _init_pg_data(data)
    port = free_port()
    log = stack.run_dir / "postgres.log"
    sock = shlex.quote(str(data))
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"
    args = [*_as_pg_owner(), pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-w", "-t", "60", "start"]
    with log.open("ab") as out:
        # A file, not a pipe: the postmaster inherits it, and a pipe would keep run() waiting.
        proc = subprocess.run(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,
        )
    pid = _postmaster_pid(data)
    if proc.returncode != 0 or pid is None:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:])
        raise StackError(
            f"PostgreSQL did not start in {data} (pg_ctl exit {proc.returncode}):\n{tail}see {log}"
        )
    stack.pidfile("postgres").write_text(f"{pid}\n")
    _create_database(port)
    return port


def _create_database(port: int) -> None:
    """Create the prefect database; on a reused cluster it is already there."""
    args = ["-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DATABASE]
    proc = subprocess.run(
        [pg_bin("createdb"), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0 and "already exists" not in proc.stderr:
        raise StackError(f"createdb {PG_DATABASE} on 127.0.0.1:{port} failed:\n{proc.stderr}")


def pg_url(port: int) -> str:
    """The server's connection URL for the prefect database on 127.0.0.1:port."""
    return f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{port}/{PG_DATABASE}"


def stop_postgres(stack: Stack, grace_s: float = 30.0) -> str:
    """Stop the postmaster in postgres.pid: pg_ctl stop -m fast on its data dir, else TERM/KILL by PID."""
    path = stack.pidfile("postgres")
    if not path.exists():
        return "no pid file"
    pid = int(path.read_text().strip())
    data = pg_data_dir(stack)
    outcome = "not running"
    # Only when the data dir's postmaster is ours: pg_ctl signals whatever postmaster.pid names.
    if alive(pid) and _postmaster_pid(data) == pid and _pg_ctl_stop(data, grace_s) and _wait_gone(pid, 5.0):
        outcome = "stopped (pg_ctl stop -m fast)"
    elif alive(pid):
        outcome = stop_pid(pid, grace_s)
    path.unlink()
    return f"pid {pid} {outcome}"


def _pg_ctl_stop(data: Path, grace_s: float) -> bool:
    """Fast shutdown (ends sessions, then checkpoints); True when pg_ctl says it stopped."""
    try:
        pg_ctl = [*_as_pg_owner(), pg_bin("pg_ctl")]
    except StackError:
        return False
    args = ["-D", str(data), "-m", "fast", "-w", "-t", f"{grace_s:.0f}", "stop"]
    proc = subprocess.run([*pg_ctl, *args], capture_output=True, stdin=subprocess.DEVNULL, cwd="/")
    return proc.returncode == 0


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
        "import sys; from pathlib import Path; from liteshift.flows.alerts import install_alerting\n"
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


def read_hosts(manifest: Path) -> dict[str, str]:
    """Host name -> work queue, read by the same manifest model `liteshift fleet` uses."""
    from liteshift.core.errors import BadInput
    from liteshift.fleet.manifest import load_manifest

    try:
        return {host.name: host.queue for host in load_manifest(manifest).hosts}
    except BadInput as exc:
        raise StackError(str(exc)) from None


def _check_host_names(hosts: Mapping[str, object]) -> None:
    """Refuse a host name that cannot be part of a file name (worker-HOST.pid)."""
    for host in hosts:
        if not HOST_NAME.fullmatch(host):
            raise StackError(f"host name {host!r} is not usable: use letters, digits, '.', '_' and '-'")


def create_queues(stack: Stack, queues: list[str]) -> None:
    """Create work queues in the pool (one that exists is fine): a worker's queue must exist first."""
    code = (
        "import sys; from prefect import get_client; from prefect.exceptions import ObjectAlreadyExists\n"
        "with get_client(sync_client=True) as c:\n"
        "    for q in sys.argv[2:]:\n"
        "        try: c.create_work_queue(name=q, work_pool_name=sys.argv[1])\n"
        "        except ObjectAlreadyExists: pass\n"
    )
    # One process for every queue: each `prefect work-queue create` costs an import of prefect.
    proc = subprocess.run(
        [sys.executable, "-c", code, POOL, *queues], env=stack.env(), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise StackError(f"creating work queues {', '.join(queues)} failed:\n{proc.stdout}{proc.stderr}")


def start_workers(stack: Stack, hosts: dict[str, str]) -> dict[str, int]:
    """One process worker per host, polling only that host's queue; return host -> PID."""
    _check_host_names(hosts)
    create_queues(stack, sorted(set(hosts.values())))
    pids: dict[str, int] = {}
    for host, queue in hosts.items():
        # LITESHIFT_HOST_ID reaches the flow runs this worker starts: they know which host they are on.
        env = {"LITESHIFT_HOST_ID": host}
        args = [*worker_command(stack), "--work-queue", queue, "--name", f"liteshift-{host}"]
        pids[host] = start(stack, f"worker-{host}", args, env=env)
    return pids


def worker_command(stack: Stack) -> list[str]:
    """A process worker of the pool running at most stack.worker_limit flow runs at once. A process
    worker otherwise spawns every run it is handed: 64 at once starved a 2-core host and its server
    (bench/RESULTS-fleet.md). Runs past the limit wait Scheduled on the server."""
    return [stack.prefect, "worker", "start", "--pool", POOL, "--limit", str(stack.worker_limit)]


def start_server(stack: Stack) -> float:
    """Start PostgreSQL when asked, then the Prefect server; return the seconds to healthy."""
    env: dict[str, str] = {}
    if stack.server_db == "postgres":
        port = start_postgres(stack)
        print(f"postgres on 127.0.0.1:{port}, data in {pg_data_dir(stack)}")
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = pg_url(port)
    args = [stack.prefect, "server", "start", "--host", "127.0.0.1", "--port", str(stack.port)]
    start(stack, "server", args, env=env)
    return wait_healthy(stack)


def up(stack: Stack) -> None:
    """Start the server, create the pool, deploy, install the automation, start the workers."""
    for name in ("server", "postgres"):
        pidfile = stack.pidfile(name)
        if pidfile.exists() and alive(int(pidfile.read_text())):
            raise StackError(f"already up (pid file {pidfile}); run 'make down' first")
    if not port_free(stack.port):
        raise StackError(f"port {stack.port} on 127.0.0.1 is taken; set PREFECT_PORT to another port")
    # Read before anything starts: a bad manifest should not cost a server start and a deploy.
    hosts = read_hosts(stack.fleet_manifest) if stack.fleet_manifest else None
    try:
        print(f"server on {stack.server_db} healthy in {start_server(stack):.1f} s")
        prefect_cli(stack, "work-pool", "create", POOL, "--type", "process", "--overwrite")
        prefect_cli(stack, "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE))
        install_automation(stack)
        print(install_alerts(stack))
        if hosts:
            for host, pid in start_workers(stack, hosts).items():
                print(f"worker liteshift-{host} on queue {hosts[host]} (pid {pid})")
        else:
            start(stack, "worker", worker_command(stack))
    except BaseException:
        down(stack)
        raise


def down(stack: Stack) -> None:
    """Stop the workers, then the server, then PostgreSQL, by their recorded PIDs."""
    workers = sorted(p.stem for p in stack.run_dir.glob("worker*.pid")) or ["worker"]
    # Together: each worker may ignore TERM for 20 s and more.
    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        for name, outcome in zip(workers, pool.map(partial(stop, stack), workers), strict=True):
            print(f"{name}: {outcome}")
    print(f"server: {stop(stack, 'server')}")
    print(f"postgres: {stop_postgres(stack)}")


def main(argv: list[str] | None = None) -> int:
    """python deployments/stack.py up|down|automations."""
    p = argparse.ArgumentParser(prog="python deployments/stack.py", description=__doc__)
    p.add_argument("command", choices=["up", "down", "automations"])
    p.add_argument("--run-dir", type=Path, default=ROOT / ".run")
    p.add_argument("--port", type=int, default=int(os.environ.get("PREFECT_PORT", "4200")))
    p.add_argument(
        "--server-db",
        default=os.environ.get("LITESHIFT_SERVER_DB") or "sqlite",
        help="the Prefect server's database: sqlite or postgres (default: $LITESHIFT_SERVER_DB, else sqlite)",
    )
    p.add_argument(
        "--fleet-manifest",
        type=Path,
        default=os.environ.get("FLEET_MANIFEST") or None,
        help="TOML with [hosts.NAME] tables: one worker per host (default: $FLEET_MANIFEST)",
    )
    p.add_argument(
        "--worker-limit",
        default=os.environ.get("LITESHIFT_WORKER_LIMIT") or "4",
        help="flow runs each worker runs at once (default: $LITESHIFT_WORKER_LIMIT, else 4)",
    )
    args = p.parse_args(argv)
    # Checked here, not by choices=: argparse does not check a default taken from the environment.
    if args.server_db not in get_args(ServerDb):
        p.error(f"--server-db (or LITESHIFT_SERVER_DB) is {args.server_db!r}: use sqlite or postgres")
    if not str(args.worker_limit).isdigit() or int(args.worker_limit) < 1:
        p.error(
            f"--worker-limit (or LITESHIFT_WORKER_LIMIT) is {args.worker_limit!r}: use a whole number >= 1"
        )
    manifest = Path(args.fleet_manifest).resolve() if args.fleet_manifest else None
    stack = Stack(
        args.run_dir.resolve(),
        args.port,
        server_db=args.server_db,
        fleet_manifest=manifest,
        worker_limit=int(args.worker_limit),
    )
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
