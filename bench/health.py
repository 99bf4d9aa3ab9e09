"""Health measurement (liteshift.health.measure): run time and peak memory at 100K, 1M and 10M rows.

Databases, all under OUT (never the originals):
  * 100K: built with liteshift.demo.build_demo_db;
  * 1M / 10M: copied from bench/out/rebuild/final/template-N.db with the sqlite3 backup API, the
    source opened read-only (immutable when its -wal is empty, so not even its -shm is touched);
then migration 001 is applied to each copy with tasks.migrate.apply_migrations: the 1M and 10M
templates already hold its four indexes (CREATE INDEX IF NOT EXISTS does nothing, its four ANALYZEs
run), and the tracking row makes measure() time the four declared queries.

Each measurement runs in a fresh child process (`--child`), so its ru_maxrss is its own peak RSS:
  * mode "default": measure() as the daily flow calls it (no quick_check), query budget 1 s;
  * mode "quick_check": the same plus PRAGMA quick_check (the weekly run);
  * mode "tracemalloc": default with tracemalloc on, for the peak of Python's own allocations
    (SQLite's page cache and statements are malloc'd by SQLite, outside tracemalloc: RSS has them).
Wall time, the per-phase times (HealthReport.timings), ru_maxrss after the imports and at the end.
The page cache is warm (the copy was just written); the load average is recorded per run because
another benchmark may share this 2-core machine.

    .venv/bin/python bench/health.py --rows 100000 1000000 10000000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TEMPLATES = ROOT / "bench" / "out" / "rebuild" / "final"
MODES = ("default", "quick_check", "tracemalloc")


def other_benchmarks() -> list[str]:
    """Command lines of other bench/*.py processes running now (read from /proc, nothing stopped)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if "bench/" in cmd and "bench/health.py" not in cmd:
            found.append(f"{pid}: {cmd[:120]}")
    return found


def copy_template(template: Path, target: Path) -> float:
    """Copy a template with the backup API into target (WAL mode); return the seconds it took."""
    wal = template.with_name(template.name + "-wal")
    empty_wal = not wal.exists() or wal.stat().st_size == 0
    uri = f"file:{template}?mode=ro" + ("&immutable=1" if empty_wal else "")
    start = time.perf_counter()
    src = sqlite3.connect(uri, uri=True)
    dst = sqlite3.connect(target, isolation_level=None)
    try:
        src.backup(dst, pages=-1)
        dst.execute("PRAGMA journal_mode = WAL")
    finally:
        src.close()
        dst.close()
    return time.perf_counter() - start


def prepare(rows: int, out: Path) -> dict[str, Any]:
    """The database of `rows` worklogs under out, with migration 001 applied and tracked."""
    from liteshift.core.config import RunConfig
    from liteshift.demo import build_demo_db
    from liteshift.tasks.migrate import apply_migrations

    db = out / f"health-{rows}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    start = time.perf_counter()
    if rows == 100_000:
        build_demo_db(db, rows)
        source = "liteshift.demo.build_demo_db"
    else:
        template = TEMPLATES / f"template-{rows}.db"
        copy_template(template, db)
        source = f"backup-API copy of {template.relative_to(ROOT)}"
    made = time.perf_counter() - start
    migrations = Path(tempfile.mkdtemp(prefix="health-bench-001-"))
    for f in (ROOT / "migrations").glob("001_*"):
        (migrations / f.name).write_bytes(f.read_bytes())
    cfg = RunConfig(database=db, migrations_dir=migrations, report_dir=out / "reports")
    start = time.perf_counter()
    applied = apply_migrations(cfg).applied
    return {
        "rows": rows,
        "database": str(db),
        "source": source,
        "prepare_seconds": round(made, 2),
        "apply_001_seconds": round(time.perf_counter() - start, 2),
        "applied": applied,
        "migrations_dir": str(migrations),
        "bytes": db.stat().st_size,
    }


def child(db: Path, migrations: Path, out: Path, mode: str, budget: float) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import tracemalloc

    from liteshift.health.history import History
    from liteshift.health.measure import measure
    from liteshift.health.thresholds import Thresholds

    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "tracemalloc":
        tracemalloc.start()
    start = time.perf_counter()
    report = measure(
        db,
        migrations_dir=migrations,
        report_dir=out / "reports",
        thresholds=Thresholds(),
        history=History(out / "history.db"),
        quick_check=mode == "quick_check",
        query_budget_s=budget,
    )
    wall = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1] if mode == "tracemalloc" else None
    result = {
        "mode": mode,
        "wall_s": round(wall, 3),
        "timings": report.timings,
        "rss_after_imports_kb": rss_imports,
        "rss_peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "tracemalloc_peak_bytes": traced,
        "queries": [
            (q.name, q.runs, round(q.p95_ms or 0, 3), round(q.max_ms or 0, 3)) for q in report.queries
        ],
        "indexes": [(i.name, i.bytes, i.unused_pct) for i in report.indexes],
        "breaches": [(f.metric, f.object, f.severity, f.value) for f in report.breaches()],
        "quick_check": report.quick_check,
        "db_bytes": report.db_bytes,
    }
    print(json.dumps(result))


def run_child(prep: dict[str, Any], out: Path, mode: str, budget: float) -> dict[str, Any]:
    load = os.getloadavg()[0]
    others = other_benchmarks()
    cmd = [sys.executable, __file__, "--child", prep["database"], prep["migrations_dir"], str(out), mode]
    done = subprocess.run([*cmd, str(budget)], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(load_before=round(load, 2), other_benchmarks=others)
    return result


def summary(results: list[dict[str, Any]]) -> str:
    lines = [
        "| Rows | DB MB | Mode | Runs | Wall s (median, min-max) "
        "| sizes / indexes / stats / queries / quick_check s "
        "| Peak RSS MB (after imports) | tracemalloc peak MB | Load before |",
        "|---:|---:|---|---:|---|---|---|---:|---|",
    ]
    for prep in results:
        for mode in MODES:
            runs = [r for r in prep["runs"] if r["mode"] == mode]
            if not runs:
                continue
            walls = [r["wall_s"] for r in runs]
            phases = " / ".join(
                f"{statistics.median(r['timings'].get(p, 0) for r in runs):.2f}"
                for p in ("sizes", "indexes", "stats", "queries", "quick_check")
            )
            rss = max(r["rss_peak_kb"] for r in runs) / 1024
            base = max(r["rss_after_imports_kb"] for r in runs) / 1024
            traced = [r["tracemalloc_peak_bytes"] for r in runs if r["tracemalloc_peak_bytes"]]
            traced_mb = f"{max(traced) / 1e6:.2f}" if traced else "—"
            loads = ", ".join(f"{r['load_before']:.2f}" for r in runs)
            lines.append(
                f"| {prep['rows']:,} | {prep['bytes'] / 1e6:,.0f} | {mode} | {len(runs)} "
                f"| {statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) | {phases} "
                f"| {rss:.0f} ({base:.0f}) | {traced_mb} | {loads} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        db, migrations, out, mode, budget = sys.argv[2:7]
        child(Path(db), Path(migrations), Path(out), mode, float(budget))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget", type=float, default=1.0, help="query_budget_s per declared query")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "health")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    results = []
    for rows in args.rows:
        prep = prepare(rows, args.out)
        made, applied = prep["prepare_seconds"], prep["apply_001_seconds"]
        print(f"{rows:,} rows: {prep['source']} in {made} s, 001 in {applied} s")
        prep["runs"] = []
        for _ in range(args.repeats):
            for mode in MODES:
                prep["runs"].append(run_child(prep, args.out, mode, args.budget))
                r = prep["runs"][-1]
                rss = r["rss_peak_kb"] / 1024
                print(f"  {mode}: {r['wall_s']} s, peak RSS {rss:.0f} MB, load {r['load_before']}")
        results.append(prep)
        (args.out / "results.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    text = summary(results)
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
