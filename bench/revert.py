"""Undoing migration 002's worklogs rebuild beside a writer: the rebuild back online against blocking.

For each size, the template of bench/rebuild.py (demo database plus migration 001's indexes) is
copied fresh per run, and bench/rebuild.py's migration (002's worklogs rebuild, no down section)
is applied blocking, without a writer: how the migration ran does not change its undo. Then the
writer process of bench/rebuild.py starts (single-row INSERT/UPDATE/DELETE commits at --writer-rate,
each logged with its latency) and, 1 s later, `tasks.rollback.rollback_database` undoes the
migration with rebuild_mode online or blocking: its derived down, the worklogs rebuild back.
Recorded: the rollback's wall time, the write lock of its downs' transaction (the cut-over when
online), and the writer's latencies during it. A third mode, kept, applies the migration online
with a revert window, lets the writer change rows for 10 s, then rolls back: the rebuild back
resumes the kept old copy and replays only those changes. Modes alternate per repeat.

    .venv/bin/python bench/revert.py --rows 1000000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import rebuild as rb  # noqa: E402  (bench/rebuild.py: template, writer, migration)

from liteshift.core.config import RunConfig  # noqa: E402
from liteshift.tasks.migrate import apply_migrations  # noqa: E402
from liteshift.tasks.rollback import rollback_database  # noqa: E402


def one_run(
    template: Path, meta: dict[str, Any], mdir: Path, work: Path, mode: str, rate: float
) -> dict[str, Any]:
    """mode: "blocking" or "online" (the migration applied blocking, its rebuild back copied anew),
    or "kept" (the migration applied online with a revert window: the rollback replays only what
    the writer changed in the 10 s before it)."""
    db = work / "revert.db"
    rb.fresh_copy(template, db)
    kept = mode == "kept"
    forward = RunConfig(
        database=db, migrations_dir=mdir, rebuild_mode="online" if kept else "blocking", revert_window_h=24
    )
    apply_migrations(forward)
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    log_path = work / f"{mode}-writer.csv"
    proc = ctx.Process(
        target=rb.writer_main,
        args=(str(db), rate, 11, int(meta["max_id"]), str(log_path), ready, stop),
        daemon=True,
    )
    proc.start()
    if not ready.wait(60):
        proc.kill()
        raise RuntimeError("writer did not start")
    time.sleep(10.0 if kept else 1.0)
    t0 = time.perf_counter()
    result = rollback_database(db, mdir, rebuild_mode="blocking" if mode == "blocking" else "online")
    t1 = time.perf_counter()
    time.sleep(1.0)
    stop.set()
    proc.join(120)
    writer = rb.read_writer_log(log_path)
    during = [r for r in writer["records"] if t0 <= r[0] + r[1] <= t1]
    lat = [r[1] for r in during]
    return {
        "mode": mode,
        "action": result.action,
        "message": result.message,
        "rollback_seconds": t1 - t0,
        "lock_seconds": result.lock_seconds,
        "writer_commits_during": len(during),
        "writer_rate_during": len(during) / (t1 - t0),
        "writer_p50_ms": 1000 * rb.pct(lat, 0.5),
        "writer_p99_ms": 1000 * rb.pct(lat, 0.99),
        "writer_max_ms": 1000 * max(lat, default=0.0),
        "writer_errors": writer["errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--writer-rate", type=float, default=250.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "revert")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    mdir = args.out / "migrations"
    rb.write_migration(mdir)
    results: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "runs": []}
    for rows in args.rows:
        template, meta = rb.build_template(args.out, rows)
        for repeat in range(args.repeats):
            modes = ("online", "blocking", "kept") if repeat % 2 == 0 else ("kept", "blocking", "online")
            for mode in modes:
                run = {
                    "rows": rows,
                    "repeat": repeat,
                    **one_run(template, meta, mdir, args.out, mode, args.writer_rate),
                }
                print(json.dumps(run), flush=True)
                results["runs"].append(run)
                (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
