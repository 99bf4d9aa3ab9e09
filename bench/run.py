"""liteshift's pipeline against the same work done by hand in the sqlite3 CLI, on equal copies.

For each size: a deterministic worklog database is built once (seed 1) as a template; every
measured run gets its own fresh `cp` of it. Per repeat, three runs in rotating order:

  a  `liteshift run --database COPY --json`: the whole pipeline, Prefect's fixed cost included,
     on the embedded API (LITESHIFT_LOCAL_API empty: no server is looked for); with --server,
     a' is the same against a running `prefect server start` on loopback
  b  the naive hand-run sequence in one sqlite3 CLI process: .backup, PRAGMA quick_check,
     BEGIN; the migration's CREATE INDEX statements; its ANALYZE statements; COMMIT, PRAGMA
     integrity_check,
     the declared queries once each (timestamps between the steps give the breakdown)
  c  the bare CREATE INDEX statements in one transaction (sqlite3 CLI): the floor for the
     write-lock window; the `cp` that made c's copy is timed too (the floor for a backup)

Wall time and peak RSS come from os.wait4 on each process. Results go to bench/out as JSON;
bench/report.py turns them into tables and the plot.

    .venv/bin/python bench/run.py --sizes 100000,1000000 --repeat 5 --server
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
OUT = ROOT / "bench" / "out"
SQLITE3 = "/usr/bin/sqlite3"
MARK = "SELECT 'T|{}|' || printf('%.6f', (julianday('now') - 2440587.5) * 86400.0);"


def wait4_run(
    cmd: list[str], env: dict[str, str] | None = None, script: Path | None = None
) -> dict[str, Any]:
    """Like run_process but with the peak RSS of this one process (os.wait4); stdout to a file."""
    out_path = OUT / "last-stdout.txt"
    with out_path.open("w") as out, script.open() if script else open(os.devnull) as inp:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdin=inp, stdout=out, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": wall,
        "rss_mb": usage.ru_maxrss / 1024,
        "rc": proc.returncode,
        "stdout": out_path.read_text(),
        "stderr": err[-3000:],
    }


def fresh_copy(template: Path, dest: Path) -> float:
    """Copy the template with cp (fsync'd), return the seconds cp took."""
    for p in dest.parent.glob(dest.name + "*"):
        p.unlink()
    start = time.perf_counter()
    subprocess.run(["cp", str(template), str(dest)], check=True)
    seconds = time.perf_counter() - start
    os.sync()
    return seconds


def migration_sql() -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """The pending migration's CREATE INDEX statements, its other statements, and the queries."""
    from liteshift.core.migrations import load_migrations

    creates, others, queries = [], [], []
    for m in load_migrations(ROOT / "migrations"):
        for stmt in m.up:
            (creates if stmt.upper().startswith("CREATE") else others).append(stmt)
        queries += [(q.name, q.sql.strip().rstrip(";")) for q in m.queries]
    return creates, others, queries


def naive_script(backup: Path) -> str:
    """What a careful person types into the sqlite3 CLI to do the same work by hand."""
    creates, others, queries = migration_sql()
    lines = [".bail on", MARK.format("start"), f".backup '{backup}'", MARK.format("backup")]
    lines += ["PRAGMA quick_check;", MARK.format("quick_check"), "BEGIN;"]
    lines += [s + ";" for s in creates] + [MARK.format("create_index")]
    lines += [s + ";" for s in others] + ["COMMIT;", MARK.format("analyze_commit")]
    lines += ["PRAGMA integrity_check;", MARK.format("integrity_check")]
    lines += [q + ";" for _, q in queries] + [MARK.format("queries")]
    return "\n".join(lines) + "\n"


def bare_script() -> str:
    """The floor for the write lock: the same statements with nothing around them."""
    creates, others, _ = migration_sql()
    lines = [".bail on", "PRAGMA wal_autocheckpoint = 0;", MARK.format("start"), "BEGIN IMMEDIATE;"]
    lines += [s + ";" for s in creates] + [MARK.format("create_index")]
    lines += [s + ";" for s in others] + [MARK.format("analyze")]
    lines += ["COMMIT;", MARK.format("commit"), "PRAGMA wal_checkpoint(PASSIVE);", MARK.format("checkpoint")]
    return "\n".join(lines) + "\n"


def marks(stdout: str) -> dict[str, float]:
    """Seconds per step from the T|name|epoch lines."""
    found = [(m.group(1), float(m.group(2))) for m in re.finditer(r"^T\|(\w+)\|([\d.]+)$", stdout, re.M)]
    return {name: round(t - found[i][1], 4) for i, (name, t) in enumerate(found[1:])}


def run_pipeline(copy: Path, work: Path, env: dict[str, str]) -> dict[str, Any]:
    cmd = [
        str(BIN / "liteshift"),
        "run",
        "--database",
        str(copy),
        "--migrations",
        str(ROOT / "migrations"),
        "--backup-dir",
        str(work),
        "--report-dir",
        str(work / "reports"),
        "--json",
    ]
    r = wait4_run(cmd, env)
    if r["rc"] != 0:
        raise SystemExit(f"pipeline failed ({r['rc']}): {r['stderr']}\n{r['stdout'][-2000:]}")
    summary = json.loads(r["stdout"].strip().splitlines()[-1])
    step_sum = sum(s["seconds"] for s in summary["steps"])
    return {
        "wall_s": round(r["wall_s"], 3),
        "rss_mb": round(r["rss_mb"], 1),
        "flow_seconds": summary["total_seconds"],
        "fixed_s": round(r["wall_s"] - step_sum, 3),
        "steps": {s["name"]: s["seconds"] for s in summary["steps"]},
        "lock_s": summary["lock_seconds"],
        "to_lock_s": summary["seconds_to_lock"],
        "checkpoint_s": summary.get("checkpoint_seconds"),
        "backup": {
            k: summary["backup"][k]
            for k in ("bytes", "seconds", "mb_per_s", "verify_seconds", "sync_seconds")
        },
        "queries": summary["queries"],
        "size_before": summary["size_before"],
        "size_after": summary["size_after"],
        "growth_pct": summary["growth_pct"],
        "index_bytes": summary["index_bytes"],
        "integrity": summary["integrity"]["checked_tables"],
    }


def run_naive(copy: Path, work: Path) -> dict[str, Any]:
    script = work / "naive.sql"
    script.write_text(naive_script(work / "naive.backup"))
    r = wait4_run([SQLITE3, str(copy)], script=script)
    if r["rc"] != 0:
        raise SystemExit(f"sqlite3 failed: {r['stderr']}")
    return {"wall_s": round(r["wall_s"], 3), "rss_mb": round(r["rss_mb"], 1), "steps": marks(r["stdout"])}


def run_bare(copy: Path, work: Path, cp_s: float) -> dict[str, Any]:
    script = work / "bare.sql"
    script.write_text(bare_script())
    r = wait4_run([SQLITE3, str(copy)], script=script)
    if r["rc"] != 0:
        raise SystemExit(f"sqlite3 failed: {r['stderr']}")
    size = copy.stat().st_size
    steps = marks(r["stdout"])
    return {
        "wall_s": round(r["wall_s"], 3),
        "create_index_s": steps["create_index"],
        "analyze_s": steps["analyze"],
        "commit_s": steps["commit"],
        "checkpoint_s": steps["checkpoint"],
        "cp_s": round(cp_s, 3),
        "cp_mb_per_s": round(size / 1e6 / cp_s, 1),
    }


def ensure_template(rows: int) -> Path:
    from liteshift.demo import build_demo_db

    path = OUT / f"template-{rows}.db"
    if not path.exists():
        print(f"building {path} ...", file=sys.stderr)
        build_demo_db(path, rows, seed=1)
    return path


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    import prefect

    cli = subprocess.run([SQLITE3, "--version"], capture_output=True, text=True).stdout.split()[0]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem": mem.split(":", 1)[1].strip(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite_python": sqlite3.sqlite_version,
        "sqlite_cli": cli,
        "prefect": prefect.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000,10000000")
    p.add_argument("--repeat", type=int, default=5, help="repeats below 5M rows")
    p.add_argument("--repeat-large", type=int, default=3, help="repeats at 5M rows and more")
    p.add_argument("--out", type=Path, help="results JSON (default bench/out/results-<time>.json)")
    p.add_argument("--server", action="store_true", help="also run the pipeline against a local server")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(OUT / "prefect-home")
    env["LITESHIFT_LOCAL_API"] = ""  # the embedded API unless --server says otherwise
    server = start_server() if args.server else None
    try:
        _measure(args, env, None if server is None else {**env, "PREFECT_API_URL": server.api_url})
    finally:
        if server is not None:
            stop(server, "server", grace_s=20)


def start_server() -> Any:
    """`prefect server start` on a free loopback port, with `make up`'s functions (stopped by PID)."""
    sys.path.insert(0, str(ROOT / "deployments"))
    from stack import Stack, start, wait_healthy

    from liteshift.flows.runtime import free_port

    stack = Stack(OUT / "server-stack", free_port())
    start(
        stack, "server", [stack.prefect, "server", "start", "--host", "127.0.0.1", "--port", str(stack.port)]
    )
    wait_healthy(stack, timeout_s=120)
    return stack


def stop(stack: Any, name: str, grace_s: float) -> None:
    from stack import stop as stop_process

    print(f"server {stop_process(stack, name, grace_s)}", file=sys.stderr)


def _measure(args: argparse.Namespace, env: dict[str, str], server_env: dict[str, str] | None) -> None:
    results: dict[str, Any] = {"machine": machine(), "argv": sys.argv, "sizes": {}}
    out = args.out or OUT / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    # One untimed warm-up run: the first use of a PREFECT_HOME creates the API's database.
    warm = OUT / "work-warmup"
    shutil.rmtree(warm, ignore_errors=True)
    warm.mkdir()
    fresh_copy(ensure_template(100_000), warm / "db.sqlite")
    run_pipeline(warm / "db.sqlite", warm, env)
    shutil.rmtree(warm)
    for rows in [int(s) for s in args.sizes.split(",")]:
        template = ensure_template(rows)
        work = OUT / f"work-{rows}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        copy = work / "db.sqlite"
        repeat = args.repeat if rows < 5_000_000 else args.repeat_large
        order = ["pipeline", "naive", "bare"] + (["pipeline-server"] if server_env else [])
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in order}
        for i in range(repeat):
            for kind in order[i % len(order) :] + order[: i % len(order)]:
                cp_s = fresh_copy(template, copy)
                if kind == "pipeline":
                    r = run_pipeline(copy, work, env)
                elif kind == "pipeline-server" and server_env:
                    r = run_pipeline(copy, work, server_env)
                elif kind == "naive":
                    r = run_naive(copy, work)
                else:
                    r = run_bare(copy, work, cp_s)
                runs[kind].append(r)
                print(f"{rows:>9} run {i + 1}/{repeat} {kind:<8} {r['wall_s']:8.2f} s", file=sys.stderr)
                for leftover in work.glob("*backup*"):
                    leftover.unlink()
        results["sizes"][str(rows)] = {"template_bytes": template.stat().st_size, "runs": runs}
        out.write_text(json.dumps(results, indent=1))
        shutil.rmtree(work, ignore_errors=True)
    print(out)


if __name__ == "__main__":
    main()
