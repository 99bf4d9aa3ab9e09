"""The fixed cost of a run: wall time of `liteshift run` with nothing to migrate, several ways.

Each case is a separate process started from this script (like a shell would), timed with
perf_counter around the whole process, its peak RSS read with os.wait4. Cases alternate run by
run so machine noise hits them alike; the median of --repeat runs is reported.

    .venv/bin/python bench/startup.py --repeat 7
    .venv/bin/python bench/startup.py --repeat 5 --case liteshift-ephemeral \
        --variant 'no-heartbeat:PREFECT_FLOWS_HEARTBEAT_FREQUENCY=' ...

Everything runs under bench/out/startup (its own PREFECT_HOME); a server this script starts
listens on 127.0.0.1 only and is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deployments"))  # stack.py, the make-up tooling
BIN = Path(sys.executable).parent
OUT = ROOT / "bench" / "out" / "startup"

from stack import Stack, StackError, start, stop, wait_healthy  # noqa: E402

from liteshift.flows.runtime import free_port  # noqa: E402

PLAIN_FLOW = """
from prefect import flow, task

@task
def step() -> int:
    return 1

@flow
def plain() -> int:
    return step()

plain()
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) and exit code of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=OUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        print(f"  exit {proc.returncode}: {' '.join(cmd)}\n{err[-2000:]}", file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, proc.returncode


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(home)
    return env


def start_server() -> Stack:
    """`prefect server start` on a free loopback port, with `make up`'s functions (stopped by PID)."""
    stack = Stack(OUT / "server-stack", free_port())
    start(
        stack, "server", [stack.prefect, "server", "start", "--host", "127.0.0.1", "--port", str(stack.port)]
    )
    try:
        wait_healthy(stack, timeout_s=120)
    except StackError as exc:
        stop(stack, "server", grace_s=20)
        raise SystemExit(str(exc)) from None
    return stack


def ui_view(home: Path) -> dict[str, int]:
    """What the UI would show for the newest flow run in this PREFECT_HOME's API database."""
    db = home / "prefect.db"
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT id, state_type FROM flow_run ORDER BY created DESC LIMIT 1").fetchone()
        if not row:
            return {}
        fid = row[0]
        return {
            "task_runs": con.execute(
                "SELECT count(*) FROM task_run WHERE flow_run_id = ?", (fid,)
            ).fetchone()[0],
            "artifacts": con.execute(
                "SELECT count(*) FROM artifact WHERE flow_run_id = ?", (fid,)
            ).fetchone()[0],
            "logs": con.execute("SELECT count(*) FROM log WHERE flow_run_id = ?", (fid,)).fetchone()[0],
            "final_state": row[1],
        }
    finally:
        con.close()


def prepare_db() -> Path:
    """A 100,000-row demo database with every migration applied: a run has nothing to do."""
    from liteshift.demo import build_demo_db
    from liteshift.migrations import TRACKING_DDL, load_migrations

    db = OUT / "small.db"
    if db.exists():
        return db
    build_demo_db(db, 100_000, seed=1)
    con = sqlite3.connect(db, isolation_level=None)
    con.execute(TRACKING_DDL)
    for m in load_migrations(ROOT / "migrations"):
        for stmt in m.up:
            con.execute(stmt)
        con.execute(
            "INSERT INTO liteshift_migrations (version, name, checksum, applied_at, duration_s, batch) "
            "VALUES (?, ?, ?, datetime('now'), 0, 'bench')",
            (m.version, m.name, m.checksum),
        )
    con.close()
    return db


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--fresh-repeat", type=int, default=3, help="runs on a fresh PREFECT_HOME")
    p.add_argument(
        "--case",
        action="append",
        help="plain-flow, liteshift-ephemeral, liteshift-fresh-home, liteshift-server, status (default: all)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:K=V,K=V -- liteshift run with these extra environment settings; a NAME starting "
        "with server- runs against the server (PREFECT_API_URL), local- lets liteshift find it",
    )
    p.add_argument("--json", type=Path, help="write the results here as JSON")
    args = p.parse_args()
    cases = args.case or [
        "status",
        "plain-flow",
        "liteshift-ephemeral",
        "liteshift-server",
        "liteshift-fresh-home",
    ]

    OUT.mkdir(parents=True, exist_ok=True)
    db = prepare_db()
    home = OUT / "home"
    (OUT / "plain_flow.py").write_text(PLAIN_FLOW)
    run_cmd = [str(BIN / "liteshift"), "run", "--database", str(db), "--report-dir", str(OUT / "reports")]
    commands: dict[str, tuple[list[str], dict[str, str]]] = {}
    for case in cases:
        if case == "status":
            commands[case] = ([str(BIN / "liteshift"), "status", "--database", str(db)], base_env(home))
        elif case == "plain-flow":
            commands[case] = ([sys.executable, str(OUT / "plain_flow.py")], base_env(home))
        elif case in ("liteshift-ephemeral", "liteshift-server"):
            commands[case] = (run_cmd, base_env(home))
    for spec in args.variant:
        name, _, pairs = spec.partition(":")
        env = base_env(home)
        for pair in filter(None, pairs.split(",")):
            key, _, value = pair.partition("=")
            env[key] = value
        commands[name] = (run_cmd, env)

    server = None
    if "liteshift-server" in commands:
        server = start_server()
        url = server.api_url
        for name, (_, env) in commands.items():
            if name == "liteshift-server" or name.startswith("server-"):
                env["PREFECT_API_URL"] = url
            elif name.startswith("local-"):  # found by liteshift itself, PREFECT_API_URL unset
                env["LITESHIFT_LOCAL_API"] = url
        print(f"server: {url} (run dir {server.run_dir})", file=sys.stderr)
    results: dict[str, dict[str, object]] = {}
    try:
        for cmd, env in commands.values():  # warm-up: first use of the home, caches
            timed(cmd, env)
        samples: dict[str, list[tuple[float, float, int]]] = {n: [] for n in commands}
        for i in range(args.repeat):
            for name, (cmd, env) in commands.items():
                samples[name].append(timed(cmd, env))
                print(f"  run {i + 1} {name}: {samples[name][-1][0]:.2f} s", file=sys.stderr)
        for name, runs in samples.items():
            results[name] = summarize(runs)
            if name.startswith(("liteshift", "local-", "server-")) or name in args_variants(args):
                server_side = name == "liteshift-server" or name.startswith(("server-", "local-"))
                results[name]["ui"] = ui_view(OUT / "server-stack" / "prefect-home" if server_side else home)
    finally:
        if server is not None:
            stop(server, "server", grace_s=20)
    if "liteshift-fresh-home" in cases:
        runs = []
        for _ in range(args.fresh_repeat):
            fresh = Path(tempfile.mkdtemp(prefix="home-", dir=OUT))
            runs.append(timed(run_cmd, base_env(fresh)))
            shutil.rmtree(fresh)
        results["liteshift-fresh-home"] = summarize(runs)
    print(f"{'case':<28} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7} {'peak RSS MB':>11}  ui")
    for name, r in results.items():
        print(
            f"{name:<28} {r['runs']:>4} {r['median_s']:>9.2f} {r['min_s']:>7.2f} {r['max_s']:>7.2f} "
            f"{r['rss_mb']:>11.0f}  {r.get('ui', '')}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def args_variants(args: argparse.Namespace) -> set[str]:
    return {spec.partition(":")[0] for spec in args.variant}


def summarize(runs: list[tuple[float, float, int]]) -> dict[str, object]:
    walls = [w for w, _, _ in runs]
    return {
        "runs": len(runs),
        "median_s": round(statistics.median(walls), 3),
        "min_s": round(min(walls), 3),
        "max_s": round(max(walls), 3),
        "rss_mb": round(statistics.median(r for _, r, _ in runs), 1),
        "failures": sum(1 for *_, rc in runs if rc != 0),
    }


if __name__ == "__main__":
    main()
