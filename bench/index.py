"""Migration 001 (four CREATE INDEX, three on worklogs) blocking against online, beside a writer.

For each size a template is built once: the demo database (liteshift.demo.build_demo_db) without
any of 001's indexes. Every measured run gets a fresh backup-API copy of it. Per repeat, one
blocking and one online run, in alternating order (repeat 0: blocking first, repeat 1: online
first, ...), so a drift of the machine's load falls on both.

One run:
  * the writer PROCESS of bench/rebuild.py (own connection, WAL, busy_timeout 10 s, foreign keys
    on) commits single-row transactions at --writer-rate (70% INSERT, 20% UPDATE, 10% DELETE) and
    logs, per commit, BEGIN IMMEDIATE .. COMMIT returned;
  * 1 s after the writer is ready, liteshift.tasks.migrate.apply_migrations runs a directory
    holding only migrations/001_add_composite_indexes.sql, index_mode "blocking" or "online"
    (online: the table copied into a shadow carrying the new indexes, then the short cut-over;
    the old copy emptied and dropped in throttled batches before apply_migrations returns);
  * the writer stops 1 s after; a thread samples the database file and its -wal every 50 ms;
  * then: integrity_check, worklogs count against the writer's own log, the four indexes there
    with the definitions 001 declares, nothing of liteshift's left but its tracking tables.

Figures: the migration's write lock (Applied.lock_seconds: the whole of it, cut-over included),
the writer's longest stall, p99 and p50 (BEGIN IMMEDIATE .. COMMIT), apply_migrations' wall time,
the drop of the old copy, the WAL's and the files' peaks. Raw: OUT/results.json; summary:
OUT/summary.md.

    .venv/bin/python bench/index.py --rows 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rebuild import (  # noqa: E402  (bench/rebuild.py: the writer and the samplers)
    DropOldTimer,
    Sampler,
    fresh_copy,
    loadavg,
    machine,
    pct,
    read_writer_log,
    remove_db,
    uptime,
    writer_main,
)

MIGRATION = ROOT / "migrations" / "001_add_composite_indexes.sql"
KEPT = ("liteshift_migrations", "liteshift_meta", "liteshift_rebuilds", "liteshift_ledger")  # liteshift's own


def build_template(out: Path, rows: int) -> tuple[Path, dict[str, Any]]:
    """The demo database without 001's indexes; built once per size, then reused."""
    from liteshift.demo import build_demo_db

    path, meta_path = out / f"template-{rows}.db", out / f"template-{rows}.json"
    if path.exists() and meta_path.exists():
        return path, json.loads(meta_path.read_text())
    tmp = out / f"template-{rows}.building.db"
    remove_db(tmp)
    t0 = time.perf_counter()
    build_demo_db(tmp, rows)
    con = sqlite3.connect(tmp, isolation_level=None)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    meta = {
        "rows": con.execute("SELECT count(*) FROM worklogs").fetchone()[0],
        "max_id": con.execute("SELECT max(id) FROM worklogs").fetchone()[0],
        "bytes": os.path.getsize(tmp),
        "build_seconds": time.perf_counter() - t0,
    }
    con.close()
    os.replace(tmp, path)
    remove_db(tmp)
    meta_path.write_text(json.dumps(meta, indent=1))
    return path, meta


def declared_indexes(work: Path) -> dict[str, str]:
    """001's indexes as SQLite stores them, built as written on a 10-row demo database."""
    from liteshift.core.migrations import parse_migration
    from liteshift.demo import build_demo_db

    tiny = work / "declared.db"
    remove_db(tiny)
    build_demo_db(tiny, 10)
    con = sqlite3.connect(tiny, isolation_level=None)
    for stmt in parse_migration(MIGRATION).up:
        if stmt.lstrip().upper().startswith("CREATE"):
            con.execute(stmt)
    found = dict(con.execute("SELECT name, sql FROM sqlite_schema WHERE name LIKE 'idx_%'").fetchall())
    con.close()
    remove_db(tiny)
    return found


def check(db: Path, initial: int, writer: dict[str, Any], declared: dict[str, str]) -> dict[str, Any]:
    con = sqlite3.connect(str(db), isolation_level=None)
    try:
        integrity = [r[0] for r in con.execute("PRAGMA integrity_check")]
        count = con.execute("SELECT count(*) FROM worklogs").fetchone()[0]
        indexes = dict(
            con.execute(
                "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL"
            ).fetchall()
        )
        left = [
            r[0]
            for r in con.execute("SELECT name FROM sqlite_schema WHERE name LIKE 'liteshift\\_%' ESCAPE '\\'")
            if r[0] not in KEPT
        ]
    finally:
        con.close()
    recs = writer["records"]
    inserts = sum(1 for r in recs if r[4] == "i" and r[5] == 1)
    deletes = sum(1 for r in recs if r[4] == "d" and r[5] == 1)
    ok = {
        "integrity_ok": integrity == ["ok"],
        "count_ok": count == initial + inserts - deletes,
        "indexes_as_declared": all(indexes.get(name) == sql for name, sql in declared.items()),
        "writer_errors_none": writer["errors"] == 0,
        "nothing_left": not left,
    }
    return {**ok, "all_ok": all(ok.values()), "left": left, "count": count}


def one_run(
    template: Path, meta: dict[str, Any], work: Path, mode: str, rate: float, seed: int, tag: str
) -> dict:
    from liteshift.core.config import RunConfig
    from liteshift.tasks.migrate import apply_migrations

    db, mdir = work / "run.db", work / "migrations"
    mdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(MIGRATION, mdir / MIGRATION.name)
    fresh_copy(template, db)
    size_before = os.path.getsize(db)
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    log_path = work / f"{tag}-writer.csv"
    proc = ctx.Process(
        target=writer_main,
        args=(str(db), rate, seed, int(meta["max_id"]), str(log_path), ready, stop),
        daemon=True,
    )
    sampler = Sampler(db)
    sampler.start()
    proc.start()
    if not ready.wait(60):
        proc.kill()
        raise RuntimeError("writer did not start")
    time.sleep(1.0)
    load_before = loadavg()
    cfg = RunConfig(database=db, migrations_dir=mdir, index_mode=mode, report_dir=work / "reports")
    error = None
    with DropOldTimer() as dropped:
        t0 = time.perf_counter()
        try:
            applied = apply_migrations(cfg)
        except Exception as exc:  # recorded, not hidden
            applied, error = None, f"{type(exc).__name__}: {exc}"
        wall = time.perf_counter() - t0
    time.sleep(1.0)
    stop.set()
    proc.join(120)
    if proc.is_alive():
        proc.kill()
        raise RuntimeError("writer did not stop")
    sampler.halt.set()
    sampler.join()
    writer = read_writer_log(log_path)
    lat = [r[1] for r in writer["records"]]
    during = [r[1] for r in writer["records"] if t0 <= r[0] <= t0 + wall]
    result = {
        "mode": mode,
        "tag": tag,
        "error": error,
        "wall_s": wall,
        "lock_s": applied.lock_seconds if applied else None,
        "copy_s": sum(s.copy_seconds for s in applied.rebuilds) if applied else None,
        "drop_old_s": dropped.seconds,
        "drop_old_longest_txn_s": max(dropped.txns, default=0.0),
        "writer_commits": len(lat),
        "writer_max_s": max(lat, default=0.0),
        "writer_p99_s": pct(lat, 0.99),
        "writer_p50_s": pct(lat, 0.5),
        "writer_over_250ms": sum(x > 0.25 for x in lat),
        "writer_commits_per_s_during": len(during) / wall if wall > 0 else 0.0,
        "wal_peak_bytes": max(w for _, _, w in sampler.samples),
        "files_peak_bytes": max(d + w for _, d, w in sampler.samples),
        "db_bytes_before": size_before,
        "load_before": load_before,
        "load_after": loadavg(),
        "check": check(db, int(meta["rows"]), writer, declared_indexes(work)),
    }
    remove_db(db)
    return result


def summarize(results: dict[str, Any]) -> str:
    lines = [
        f"# Migration 001: blocking against online index builds ({results['started']})",
        "",
        f"Machine: {results['machine']}. Writer: {results['writer_rate']:.0f} commits/s.",
        "",
        "| rows | mode | runs | write lock (median) | writer longest stall | writer p99 | writer p50 "
        "| commits > 250 ms | apply wall | drop old copy (longest txn) | WAL peak | files peak | checks |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for rows, runs in results["sizes"].items():
        for mode in ("blocking", "online"):
            mine = [r for r in runs if r["mode"] == mode and not r["error"]]
            if not mine:
                continue

            def med(key: str, runs: list[dict[str, Any]] = mine) -> float:
                return statistics.median(r[key] for r in runs)

            lines.append(
                f"| {int(rows):,} | {mode} | {len(mine)} | {med('lock_s') * 1000:,.1f} ms "
                f"| {med('writer_max_s') * 1000:,.0f} ms | {med('writer_p99_s') * 1000:.1f} ms "
                f"| {med('writer_p50_s') * 1000:.1f} ms | {med('writer_over_250ms'):.0f} "
                f"| {med('wall_s'):,.1f} s | {med('drop_old_s'):.1f} s "
                f"({med('drop_old_longest_txn_s') * 1000:.0f} ms) "
                f"| {med('wal_peak_bytes') / 1e6:,.0f} MB | {med('files_peak_bytes') / 1e6:,.0f} MB "
                f"| {'all ok' if all(r['check']['all_ok'] for r in mine) else 'FAILED'} |"
            )
        failed = [r for r in runs if r["error"]]
        lines += [f"- {int(rows):,} {r['mode']} ({r['tag']}): {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--writer-rate", type=float, default=250.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "index")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "uptime_before": uptime(),
        "writer_rate": args.writer_rate,
        "sizes": {},
    }
    for rows in args.rows:
        template, meta = build_template(args.out, rows)
        runs: list[dict[str, Any]] = []
        results["sizes"][str(rows)] = runs
        for repeat in range(args.repeats):
            order = ("blocking", "online") if repeat % 2 == 0 else ("online", "blocking")
            for mode in order:
                tag = f"{rows}-{mode}-{repeat}"
                print(f"[{tag}] {uptime()}", flush=True)
                run = one_run(template, meta, work, mode, args.writer_rate, 1000 + repeat, tag)
                runs.append(run)
                print(
                    f"[{tag}] lock {run['lock_s']} s, writer max {run['writer_max_s'] * 1000:.0f} ms, "
                    f"wall {run['wall_s']:.1f} s, checks {run['check']['all_ok']}",
                    flush=True,
                )
                (args.out / "results.json").write_text(json.dumps(results, indent=1))
    results["uptime_after"] = uptime()
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = summarize(results)
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
