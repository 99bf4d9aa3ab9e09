"""The fixed cost of the commands that answer without a flow run: wall time per process.

`liteshift run` with nothing to migrate, `liteshift status` and `liteshift plan` import no Prefect
(a test proves it); `plain-flow` is an empty Prefect flow with one task on the embedded API, for
scale. Each case is a separate process started from this script (like a shell would), timed with
perf_counter around the whole process, its peak RSS read with os.wait4. Cases alternate run by
run so machine noise hits them alike; the median of --repeat runs is reported. The fixed cost of
a run that migrates (embedded API and a running server) is measured by bench/run.py.

    .venv/bin/python bench/startup.py --repeat 15
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUT = ROOT / "bench" / "out" / "startup"


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


def prepare_db() -> Path:
    """A 100,000-row demo database with every migration applied: a run has nothing to do."""
    from liteshift.core.migrations import load_migrations
    from liteshift.core.tracking import TRACKING_DDL
    from liteshift.demo import build_demo_db

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
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--case", action="append", help="noop-run, status, plan, plain-flow (default: all)")
    p.add_argument("--json", type=Path, help="write the results here as JSON")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    db = prepare_db()
    env = base_env(OUT / "home")
    (OUT / "plain_flow.py").write_text(PLAIN_FLOW)
    where = ["--database", str(db), "--migrations", str(ROOT / "migrations")]
    liteshift = str(BIN / "liteshift")
    commands = {
        "noop-run": [liteshift, "run", *where, "--report-dir", str(OUT / "reports")],
        "status": [liteshift, "status", *where],
        "plan": [liteshift, "plan", *where],
        "plain-flow": [sys.executable, str(OUT / "plain_flow.py")],
    }
    commands = {name: cmd for name, cmd in commands.items() if not args.case or name in args.case}
    for cmd in commands.values():  # warm-up: first use of the home, page cache
        timed(cmd, env)
    samples: dict[str, list[tuple[float, float, int]]] = {n: [] for n in commands}
    for i in range(args.repeat):
        for name, cmd in commands.items():
            samples[name].append(timed(cmd, env))
            print(f"  run {i + 1} {name}: {samples[name][-1][0]:.3f} s", file=sys.stderr)
    results = {name: summarize(runs) for name, runs in samples.items()}
    print(f"{'case':<12} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7} {'peak RSS MB':>11}")
    for name, r in results.items():
        print(
            f"{name:<12} {r['runs']:>4} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f} "
            f"{r['rss_mb']:>11.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


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
