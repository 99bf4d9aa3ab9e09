"""Fleet throughput: one migration over 200 small SQLite files, on Prefect's process workers.

Databases: a template built once with liteshift.demo.build_demo_db (--rows worklogs, 200 by
default); every database of every configuration is a fresh copy of it (sqlite3 backup API), so
each configuration starts from identical, unmigrated files. The migration is
migrations/001_add_composite_indexes.sql and its .toml alone, copied into WORK/mig. Every run
gets bench_budget_s=0 and bench_min_runs=3 (the query timing kept short) and a report directory
of its configuration, whose JSON reports give each run's steps and the migrate step's own time.

One stack (deployments/stack.py: PostgreSQL, the Prefect server, the deployments, the
automation; worker poll interval 5 s, as `make up`) on a free loopback port, then:
  A  three hosts h1/h2/h3 (a directory each, 67/67/66 databases; one process worker per host
     queue, LITESHIFT_HOST_ID=h1..h3): `liteshift fleet run --manifest M --fleet-id ID
     --canary 1 --waves 100% --migrations DIR --param bench_budget_s=0 --param bench_min_runs=3`
     (batches: a migrate-host-batch run per host and stage);
  P  the same over fresh copies with --dispatch per-database (a deployment run per database);
  B  the same with one host holding all the databases (fresh copies), one worker;
  C  no worker: a plain loop of `liteshift run --database DB --migrations DIR` against the same
     server (PREFECT_API_URL set), one database after the other, until --serial-budget-s passed;
then the stack is stopped (by its PID files), and
  E  the same loop with the embedded API (PREFECT_API_URL unset, LITESHIFT_LOCAL_API empty, a
     PREFECT_HOME of its own): one warm-up run (Prefect creates its SQLite schema), then
     --embedded runs.

Measured per configuration: the wall time of the command (the fleet run, or the whole loop);
per child run, from the API, the times of its SCHEDULED, PENDING, RUNNING and final states:
queue wait = SCHEDULED->PENDING (the worker's poll), spawn = PENDING->RUNNING (the worker starts
`python -m prefect.engine`, which imports Prefect and liteshift and loads the flow), run =
start_time->end_time; from its report, the steps' seconds; fixed cost = run - migrate step.
For the loops also each `liteshift run` process's wall time. CPU: every second /proc/stat
(cores busy), the load average, MemAvailable and the number of live `prefect.engine`
processes; per process tree (server, postgres, the workers with their flow-run processes)
utime+stime+cutime+cstime before and after, and the CLI's from getrusage(RUSAGE_CHILDREN).
Checked after each configuration: every database's liteshift_migrations holds exactly version
001, and there is exactly one migrate-database run per database.

A fleet run that leaves less than MIN_FREE_MB of memory or outlasts --fleet-timeout-s is
stopped (the CLI, then the workers' flow-run processes, by PID) and reported as aborted.

Raw output: bench/out/fleet/ (results.json, runs-*.csv, samples-*.csv, the stack's logs).

    .venv/bin/python bench/fleet.py                        # 200 databases; C 180 s; E 15 runs
    .venv/bin/python bench/fleet.py --dbs 12 --serial-budget-s 30 --embedded 3   # a quick try
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deployments"))
import httpx  # noqa: E402
from stack import Stack, down, pg_data_dir, start_workers, stop, up  # noqa: E402

from liteshift.demo import build_demo_db  # noqa: E402
from liteshift.flows.runtime import free_port  # noqa: E402

LITESHIFT = str(Path(sys.executable).with_name("liteshift"))
MIGRATION = "001_add_composite_indexes"
HOSTS = ("h1", "h2", "h3")
MIN_FREE_MB = 2048
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Databases and manifests


def make_work(base: Path, rows: int) -> Path:
    """A private work directory with the template database and the migration."""
    work = Path(tempfile.mkdtemp(dir=base, prefix="lsfleet-"))
    (work / "mig").mkdir()
    for suffix in (".sql", ".toml"):
        shutil.copy(ROOT / "migrations" / f"{MIGRATION}{suffix}", work / "mig")
    build_demo_db(work / "template.db", rows)
    return work


def copy_db(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(src)) as s, contextlib.closing(sqlite3.connect(dst)) as d:
        s.backup(d)
    return dst


def spread(template: Path, dirs: list[Path], n: int) -> list[Path]:
    """n copies of the template, dealt round robin over dirs."""
    return [copy_db(template, dirs[i % len(dirs)] / f"{i:03d}.db") for i in range(n)]


def write_manifest(path: Path, hosts: dict[str, Path]) -> Path:
    path.write_text("".join(f'[hosts.{h}]\npaths = ["{d}/*.db"]\n\n' for h, d in hosts.items()))
    return path


def versions(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        try:
            return [r[0] for r in con.execute("SELECT version FROM liteshift_migrations ORDER BY version")]
        except sqlite3.OperationalError:
            return []


def check_dbs(dbs: list[Path], runs_per_db: Counter[str]) -> dict[str, Any]:
    """Every database at exactly 001, and exactly one migrate-database run for each."""
    return {
        "databases": len(dbs),
        "at_001": sum(versions(db) == ["001"] for db in dbs),
        "exactly_one_run": sum(runs_per_db[str(db)] == 1 for db in dbs),
    }


# ---------------------------------------------------------------------------------------------
# CPU, load and memory


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f[:8]) - idle, sum(f[:8])


def mem_available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return -1


def proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds of the process and of its reaped children)."""
    table = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        table[int(d.name)] = (int(f[1]), sum(int(x) for x in f[11:15]) / HZ)
    return table


def descendants(root: int, table: dict[int, tuple[int, float]]) -> list[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += kids.get(pid, [])
    return [p for p in found if p in table]


def tree_cpu(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each group of process trees (reaped children included)."""
    table = proc_table()
    return {
        name: sum(table[p][1] for pid in pids for p in descendants(pid, table))
        for name, pids in roots.items()
    }


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def engines() -> dict[int, float]:
    """The live flow-run processes (`python -m prefect.engine`): pid -> resident MB."""
    page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if b"prefect.engine" in (d / "cmdline").read_bytes():
                    found[int(d.name)] = int((d / "statm").read_text().split()[1]) * page_mb
    return found


def snapshot(out: Path, label: str) -> None:
    """The busiest processes of the machine, ours or not, into ps-<label>.txt."""
    ps = subprocess.run(["ps", "-eo", "pid,ppid,etime,pcpu,rss,args", "--sort=-pcpu"], capture_output=True)
    (out / f"ps-{label}.txt").write_bytes(b"\n".join(ps.stdout.splitlines()[:30]) + b"\n")


class Sampler(threading.Thread):
    """Every second: cores busy, load average, MemAvailable, live flow-run processes."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.rows: list[dict[str, float]] = []
        self.halt = threading.Event()
        self.low_memory = False

    def run(self) -> None:
        prev, t0 = cpu_jiffies(), time.monotonic()
        while not self.halt.wait(1.0):
            now = cpu_jiffies()
            busy, total = now[0] - prev[0], now[1] - prev[1]
            prev, mem, live = now, mem_available_mb(), engines()
            self.low_memory |= 0 <= mem < MIN_FREE_MB
            self.rows.append(
                {
                    "t": round(time.monotonic() - t0, 1),
                    "cores_busy": round(NCPU * busy / total, 2) if total else 0.0,
                    "load1": float(Path("/proc/loadavg").read_text().split()[0]),
                    "mem_avail_mb": mem,
                    "engines": len(live),
                    "engines_rss_mb": round(sum(live.values())),
                }
            )

    def summary(self) -> dict[str, float]:
        if not self.rows:
            return {}
        col = {k: [r[k] for r in self.rows] for k in self.rows[0]}
        return {
            "cores_busy_mean": round(statistics.fmean(col["cores_busy"]), 2),
            "load1_mean": round(statistics.fmean(col["load1"]), 2),
            "load1_max": max(col["load1"]),
            "mem_avail_min_mb": min(col["mem_avail_mb"]),
            "engines_peak": max(col["engines"]),
            "engines_rss_peak_mb": max(col["engines_rss_mb"]),
        }


class Meter:
    """CPU of the stack's process trees, this process's children, and the machine, over a span."""

    def __init__(self, roots: dict[str, list[int]]) -> None:
        self.roots, self.sampler = roots, Sampler()

    def __enter__(self) -> Meter:
        self.t0, self.jiffies0 = time.monotonic(), cpu_jiffies()
        self.trees0, self.cli0 = tree_cpu(self.roots), children_cpu()
        self.sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sampler.halt.set()
        self.sampler.join()
        self.wall = time.monotonic() - self.t0
        trees, jiffies = tree_cpu(self.roots), cpu_jiffies()
        self.cpu = {k: round(trees[k] - self.trees0[k], 1) for k in trees}
        self.cpu["cli"] = round(children_cpu() - self.cli0, 1)
        self.cpu["machine_busy"] = round((jiffies[0] - self.jiffies0[0]) / HZ, 1)
        ours = sum(v for k, v in self.cpu.items() if k != "machine_busy")
        self.cpu["other"] = round(self.cpu["machine_busy"] - ours, 1)

    def result(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall, 2), "cpu_s": self.cpu, "samples": self.sampler.summary()}


# ---------------------------------------------------------------------------------------------
# The API and the reports


def ts(text: str | None) -> float | None:
    return None if not text else datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def all_runs(api: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every flow run the filter matches (the API pages at 200)."""
    found: list[dict[str, Any]] = []
    with httpx.Client(base_url=api, timeout=60) as c:
        while True:
            page = c.post("/flow_runs/filter", json={**body, "limit": 200, "offset": len(found)})
            page.raise_for_status()
            found += page.json()
            if len(page.json()) < 200:
                return found


def state_times(api: str, runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """run id -> the first time it entered each state type."""
    out: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=api, timeout=60) as c:
        for run in runs:
            states = c.get("/flow_run_states/", params={"flow_run_id": run["id"]}).json()
            times: dict[str, float] = {}
            for s in sorted(states, key=lambda s: s["timestamp"]):
                times.setdefault(s["type"], ts(s["timestamp"]) or 0.0)
            out[run["id"]] = times
    return out


def load_reports(directory: Path) -> dict[str, dict[str, Any]]:
    """flow run id -> its report's summary (the JSON beside each markdown report)."""
    found = {}
    for path in directory.glob("*.json"):
        data = json.loads(path.read_text())
        found[str(data.get("flow_run_id"))] = data
    return found


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 3)


def run_row(run: dict[str, Any], states: dict[str, float], report: dict[str, Any] | None) -> dict[str, Any]:
    """One child run: its state times, its run time, and its report's steps."""
    steps = {s["name"]: s["seconds"] for s in (report or {}).get("steps", [])}
    start, end = ts(run["start_time"]), ts(run["end_time"])
    row: dict[str, Any] = {
        "id": run["id"],
        "database": run["parameters"].get("database"),
        "host": run["parameters"].get("expected_host"),
        "state": run["state_type"],
        "report_status": (report or {}).get("status"),
        "created": ts(run["created"]),
        "queue_wait_s": diff(states.get("SCHEDULED"), states.get("PENDING")),
        "spawn_s": diff(states.get("PENDING"), states.get("RUNNING")),
        "run_s": diff(start, end),
        "start": start,
        "end": end,
        "steps_s": round(sum(steps.values()), 3) if steps else None,
        "migrate_s": steps.get("migrate"),
    }
    row["fixed_s"] = diff(row["migrate_s"], row["run_s"])
    row["overhead_s"] = diff(row["steps_s"], row["run_s"])
    return row


def child_rows(
    api: str, runs: list[dict[str, Any]], reports: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    times = state_times(api, runs)
    return sorted(
        (run_row(r, times[r["id"]], reports.get(r["id"])) for r in runs), key=lambda r: r["created"]
    )


def pct(values: Iterable[float | None], q: float) -> float | None:
    """Nearest-rank percentile."""
    xs = sorted(v for v in values if v is not None)
    return None if not xs else round(xs[max(0, math.ceil(len(xs) * q) - 1)], 3)


def stats(rows: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    xs = [r[key] for r in rows if r.get(key) is not None]
    return {"n": len(xs), "p50": pct(xs, 0.5), "p95": pct(xs, 0.95), "max": pct(xs, 1.0)}


def timing_summary(rows: list[dict[str, Any]], keys: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {k: stats(rows, k) for k in keys}
    starts = [r["start"] for r in rows if r.get("start")]
    ends = [r["end"] for r in rows if r.get("end")]
    created = [r["created"] for r in rows if r.get("created")]
    if starts and ends and created:
        out["created_span_s"] = round(max(created) - min(created), 1)
        out["first_created_to_last_end_s"] = round(max(ends) - min(created), 1)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------------------------------------
# The configurations


def stack_roots(stack: Stack) -> dict[str, list[int]]:
    """The stack's process trees by role, from its PID files."""
    workers = [int(p.read_text()) for p in stack.run_dir.glob("worker*.pid")]
    return {
        "server": [int(stack.pidfile("server").read_text())],
        "postgres": [int(stack.pidfile("postgres").read_text())],
        "workers": workers,
    }


def child_params(reports: Path) -> list[str]:
    pairs = ("bench_budget_s=0", "bench_min_runs=3", f"report_dir={reports}")
    return [x for pair in pairs for x in ("--param", pair)]


def wait_or_abort(proc: subprocess.Popen[bytes], meter: Meter, stack: Stack, timeout_s: float) -> str | None:
    """Wait for the fleet CLI; stop it (and the workers' flow-run processes) on low memory or timeout."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        reason = "memory" if meter.sampler.low_memory else "timeout" if time.monotonic() > deadline else None
        if reason:
            proc.terminate()
            proc.wait(60)
            table = proc_table()
            for worker in stack_roots(stack)["workers"]:
                for pid in descendants(worker, table)[1:]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            return reason
        time.sleep(0.5)
    return None


def run_fleet(
    stack: Stack, name: str, manifest: Path, work: Path, dbs: list[Path], args: Any, *extra: str
) -> dict:
    """`liteshift fleet run` over the manifest; the children from the API; the databases checked."""
    fleet_id = f"bench-{name.lower()}-{datetime.now(UTC):%H%M%S}"
    reports = work / "reports" / name
    cmd = [LITESHIFT, "fleet", "run", "--manifest", str(manifest), "--fleet-id", fleet_id]
    cmd += ["--canary", "1", "--waves", "100%", "--migrations", str(work / "mig")]
    cmd += ["--plan-dir", str(work / "plans"), *child_params(reports), *extra, "--json"]
    log = args.out / f"cli-{name}.log"
    print(f"[{name}] {len(dbs)} databases: {' '.join(cmd)}", flush=True)
    snapshot(args.out, f"{name}-start")
    with Meter(stack_roots(stack)) as meter, log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=stack.env(), stdout=out, stderr=subprocess.STDOUT)
        aborted = wait_or_abort(proc, meter, stack, args.fleet_timeout_s)
    snapshot(args.out, f"{name}-end")
    runs = all_runs(stack.api_url, {"flow_runs": {"tags": {"all_": [f"fleet-{fleet_id}"]}}})
    named = {"flow_runs": {"name": {"any_": [f"fleet-{fleet_id}"]}}}
    parent = next(iter(all_runs(stack.api_url, named)), None)
    runs = [r for r in runs if r["name"] != f"fleet-{fleet_id}"]
    rows = child_rows(stack.api_url, runs, load_reports(reports))
    write_csv(args.out / f"runs-{name}.csv", rows)
    write_csv(args.out / f"samples-{name}.csv", meter.sampler.rows)
    return {
        "config": name,
        "fleet_id": fleet_id,
        "databases": len(dbs),
        "exit_code": proc.returncode,
        "aborted": aborted,
        "stdout_tail": log.read_text(errors="replace")[-600:],
        **meter.result(),
        "runs_per_min": round(60 * len(rows) / meter.wall, 1),
        "parent_run_s": diff(ts(parent["start_time"]), ts(parent["end_time"])) if parent else None,
        "children": timing_summary(
            rows, ("queue_wait_s", "spawn_s", "run_s", "steps_s", "migrate_s", "fixed_s", "overhead_s")
        ),
        "child_states": dict(Counter(r["state"] for r in rows)),
        "check": check_dbs(dbs, Counter(r["database"] for r in rows)),
    }


def serial_loop(
    dbs: list[Path], env: dict[str, str], work: Path, reports: Path, budget_s: float
) -> list[dict[str, Any]]:
    """`liteshift run` on one database after the other until budget_s has passed."""
    done: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for db in dbs:
        if time.monotonic() - t0 > budget_s:
            break
        cmd = [LITESHIFT, "run", "--database", str(db), "--migrations", str(work / "mig")]
        cmd += ["--bench-budget", "0", "--bench-min-runs", "3", "--report-dir", str(reports), "--json"]
        t = time.monotonic()
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t
        last = (proc.stdout.strip().splitlines() or ["{}"])[-1]
        run_id = json.loads(last).get("flow_run_id") if last.startswith("{") else None
        done.append(
            {"database": str(db), "exit": proc.returncode, "proc_wall_s": round(wall, 3), "id": run_id}
        )
    return done


def serial_rows(loop: list[dict[str, Any]], runs: dict[str, dict[str, Any]], reports: Path) -> list[dict]:
    """The loop's processes joined with their flow runs (API or embedded DB) and reports."""
    by_id, rows = load_reports(reports), []
    for item in loop:
        run = runs.get(str(item["id"]))
        row = run_row(run, {}, by_id.get(str(item["id"]))) if run else {"run_s": None, "migrate_s": None}
        row.update(item)
        row["outside_flow_s"] = diff(row.get("run_s"), item["proc_wall_s"])
        row["proc_fixed_s"] = diff(row.get("migrate_s"), item["proc_wall_s"])
        rows.append(row)
    return rows


def serial_result(
    name: str, meter: Meter, rows: list[dict[str, Any]], dbs: list[Path], per_db: Counter
) -> dict:
    keys = (
        "proc_wall_s",
        "run_s",
        "steps_s",
        "migrate_s",
        "fixed_s",
        "overhead_s",
        "outside_flow_s",
        "proc_fixed_s",
    )
    ran = [Path(r["database"]) for r in rows]
    return {
        "config": name,
        "databases": len(ran),
        "of_prepared": len(dbs),
        "exit_codes": dict(Counter(r["exit"] for r in rows)),
        **meter.result(),
        "runs_per_min": round(60 * len(rows) / meter.wall, 1),
        "children": timing_summary(rows, keys),
        "check": check_dbs(ran, per_db),
    }


def run_serial_server(stack: Stack, work: Path, dbs: list[Path], args: Any) -> dict:
    reports = work / "reports" / "C"
    print(f"[C] liteshift run loop against {stack.api_url}, budget {args.serial_budget_s} s", flush=True)
    snapshot(args.out, "C-start")
    with Meter(stack_roots(stack)) as meter:
        loop = serial_loop(dbs, stack.env(), work, reports, args.serial_budget_s)
    with httpx.Client(base_url=stack.api_url, timeout=60) as c:
        runs = {str(i["id"]): c.get(f"/flow_runs/{i['id']}").json() for i in loop if i["id"]}
    everything = all_runs(stack.api_url, {"flows": {"name": {"any_": ["migrate-database"]}}})
    per_db = Counter(r["parameters"].get("database") for r in everything)
    rows = serial_rows(loop, runs, reports)
    write_csv(args.out / "runs-C.csv", rows)
    write_csv(args.out / "samples-C.csv", meter.sampler.rows)
    return serial_result("C", meter, rows, dbs, per_db)


def embedded_runs(home: Path) -> dict[str, dict[str, Any]]:
    """The flow runs the embedded servers recorded, read from their SQLite database."""
    with contextlib.closing(sqlite3.connect(f"file:{home / 'prefect.db'}?mode=ro", uri=True)) as con:
        cols = ("id", "start_time", "end_time", "created", "state_type", "parameters")
        rows = con.execute(f"SELECT {', '.join(cols)} FROM flow_run").fetchall()
    return {
        str(r[0]): {**dict(zip(cols, r, strict=True)), "parameters": json.loads(r[5] or "{}")} for r in rows
    }


def run_embedded(work: Path, dbs: list[Path], args: Any) -> dict:
    home = work / "embedded-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), LITESHIFT_LOCAL_API="", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    print(f"[E] embedded API: 1 warm-up + {args.embedded} runs", flush=True)
    snapshot(args.out, "E-start")
    warm = serial_loop(dbs[:1], env, work, work / "reports" / "E-warmup", 1e9)
    with Meter({}) as meter:
        loop = serial_loop(dbs[1 : 1 + args.embedded], env, work, work / "reports" / "E", 1e9)
    runs = embedded_runs(home)
    per_db = Counter(r["parameters"].get("database") for r in runs.values())
    rows = serial_rows(loop, runs, work / "reports" / "E")
    write_csv(args.out / "runs-E.csv", rows)
    write_csv(args.out / "samples-E.csv", meter.sampler.rows)
    return {**serial_result("E", meter, rows, dbs, per_db), "warmup_proc_wall_s": warm[0]["proc_wall_s"]}


def switch_to_one_host(stack: Stack) -> None:
    """Stop the three host workers (together: each may ignore TERM for 20 s), start one for 'solo'."""
    names = [p.stem for p in stack.run_dir.glob("worker-*.pid")]
    with ThreadPoolExecutor(len(names)) as pool:
        for name, outcome in zip(names, pool.map(partial(stop, stack), names), strict=True):
            print(f"{name}: {outcome}", flush=True)
    start_workers(stack, {"solo": "liteshift-solo"})


# ---------------------------------------------------------------------------------------------
# Main


def machine() -> dict[str, Any]:
    model = next(
        (
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in x
        ),
        "",
    )
    return {
        "cpus": NCPU,
        "cpu_model": model,
        "mem_total_mb": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
    }


def prepare(work: Path, n: int) -> dict[str, Any]:
    """Fresh copies for every configuration, and the two manifests."""
    t = work / "template.db"
    a_dirs = {h: work / "A" / h for h in HOSTS}
    return {
        "A": spread(t, list(a_dirs.values()), n),
        "P": spread(t, [work / "P" / h for h in HOSTS], n),
        "B": spread(t, [work / "B" / "solo"], n),
        "C": spread(t, [work / "C"], n),
        "E": spread(t, [work / "E"], n),
        "manifest_A": write_manifest(work / "fleet-A.toml", {h: d for h, d in a_dirs.items()}),
        "manifest_P": write_manifest(work / "fleet-P.toml", {h: work / "P" / h for h in HOSTS}),
        "manifest_B": write_manifest(work / "fleet-B.toml", {"solo": work / "B" / "solo"}),
    }


def run_all(work: Path, args: Any, results: dict[str, Any]) -> None:
    dbs = prepare(work, args.dbs)
    stack = Stack(
        run_dir=work / "run",
        port=free_port(),
        server_db="postgres",
        fleet_manifest=dbs["manifest_A"],
        extra_env=(("LITESHIFT_ALLOWED_ROOTS", str(work)),),
    )
    try:
        t = time.monotonic()
        up(stack)
        results["stack_up_s"] = round(time.monotonic() - t, 1)
        save(args.out, results)
        if "A" in args.configs:
            results["A"] = run_fleet(stack, "A", dbs["manifest_A"], work, dbs["A"], args)
            save(args.out, results)
        if "P" in args.configs:
            extra = ("--dispatch", "per-database")
            results["P"] = run_fleet(stack, "P", dbs["manifest_P"], work, dbs["P"], args, *extra)
            save(args.out, results)
        if "B" in args.configs:
            switch_to_one_host(stack)
            results["B"] = run_fleet(stack, "B", dbs["manifest_B"], work, dbs["B"], args)
            save(args.out, results)
            stop(stack, "worker-solo")
        if "C" in args.configs:
            results["C"] = run_serial_server(stack, work, dbs["C"], args)
            save(args.out, results)
    finally:
        down(stack)
        shutil.rmtree(pg_data_dir(stack), ignore_errors=True)
        for log in stack.run_dir.glob("*.log"):
            shutil.copy(log, args.out / f"stack-{log.name}")
    if args.embedded:
        results["E"] = run_embedded(work, dbs["E"], args)


def save(out: Path, results: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dbs", type=int, default=200)
    p.add_argument("--rows", type=int, default=200, help="worklogs per database")
    p.add_argument("--serial-budget-s", type=float, default=180.0, help="C: start no run after this")
    p.add_argument("--embedded", type=int, default=15, help="E: runs after the warm-up (0: skip E)")
    p.add_argument("--fleet-timeout-s", type=float, default=840.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "fleet")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--configs", default="A,P,B,C", help="which of A, P, B, C to run (E: --embedded)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "args": vars(args),
    }
    work = make_work(Path("/var/tmp"), args.rows)
    try:
        run_all(work, args, results)
    finally:
        results["finished"] = datetime.now(UTC).isoformat()
        results["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
        save(args.out, results)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in results.items() if k in "ABCE"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
