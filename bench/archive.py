"""Archiving throughput against a concurrent writer's commit latency, per batch size.

A template demo database (liteshift.demo.build_demo_db, --rows worklogs) is built once and cached
in OUT. Every measured run gets a fresh copy of it (sqlite3 backup API) and a new archive file.

One run:
  * a writer PROCESS (own connection, WAL, synchronous NORMAL, busy_timeout 10 s) commits one
    statement per BEGIN IMMEDIATE .. COMMIT at --writer-rate on an absolute schedule (50% INSERT
    of a row dated 2024-2025, 50% UPDATE of a random id) and records, per commit, its start
    (time.monotonic, system-wide) and its latency: BEGIN IMMEDIATE called .. COMMIT returned;
  * --baseline-s seconds of the writer alone (the baseline), then liteshift.archive.archive_rows
    moves the rows with started < --cutoff, in fixed batches (500 / 2000 / 10000 rows) or adaptive
    (budget_s 0.02, and 0.005: the default since this bench); the writer stops 0.5 s after it returns;
  * checks: the result verified, live + archive rows = template rows + the writer's inserts,
    no row in both files.
Configurations run interleaved, in a rotated order per repeat; the summary gives medians.

Raw figures: OUT/results.json (rewritten after every run); summary: OUT/summary.md.

    .venv/bin/python bench/archive.py --rows 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name: (batch_rows, budget_s); batch_rows None: sized by the throttle towards the budget.
CONFIGS: dict[str, tuple[int | None, float]] = {
    "fixed-500": (500, 0.02),
    "fixed-2000": (2000, 0.02),
    "fixed-10000": (10000, 0.02),
    "adaptive": (None, 0.02),  # archive_rows' default when this bench was run
    "adaptive-5ms": (None, 0.005),  # the default since
}
TEAMS = 100  # liteshift.demo.TEAMS; a team n belongs to company 1 + n % 20 (liteshift.demo._company_of)


def writer_main(path: str, rate: float, seed: int, log_path: str, ready: Any, stop: Any) -> None:
    """The application: one row per transaction at `rate` commits/s; logs (start, latency) pairs."""
    rng = random.Random(seed)
    con = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    con.execute("PRAGMA busy_timeout = 10000")
    con.execute("PRAGMA synchronous = NORMAL")
    top = con.execute("SELECT max(id) FROM worklogs").fetchone()[0]
    samples: list[tuple[float, float, str]] = []
    ready.set()
    start, i = time.monotonic(), 0
    while not stop.is_set():
        began = time.monotonic()
        if rng.random() < 0.5:
            team = rng.randint(1, TEAMS)
            day = f"{rng.choice((2024, 2025))}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} 09:00:00"
            sql = (
                "INSERT INTO worklogs (company_id, team_id, jira_instance, author_email, issue_key, started, "
                "time_spent_seconds, comment) VALUES (?, ?, 'Company Main', 'bench@example.com', 'PRJ-1', ?, "
                "60, 'bench')"
            )
            params: tuple[object, ...] = (1 + team % 20, team, day)
            kind = "I"
        else:
            sql, params, kind = (
                "UPDATE worklogs SET time_spent_seconds = ? WHERE id = ?",
                (120, rng.randint(1, top)),
                "U",
            )
        con.execute("BEGIN IMMEDIATE")
        con.execute(sql, params)
        con.execute("COMMIT")
        samples.append((began, time.monotonic() - began, kind))
        i += 1
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
    con.close()
    with open(log_path, "w", encoding="utf-8") as fh:
        json.dump(samples, fh)


def template(out: Path, rows: int) -> Path:
    """The cached demo database of `rows` worklogs."""
    from liteshift.demo import build_demo_db

    path = out / f"template-{rows}.db"
    if not path.exists():
        started = time.perf_counter()
        partial = out / f"template-{rows}.partial.db"
        for leftover in out.glob(partial.name + "*"):
            leftover.unlink()
        build_demo_db(partial, rows)
        partial.rename(path)
        print(f"built {path.name} in {time.perf_counter() - started:.1f} s", flush=True)
    return path


def fresh_copy(src: Path, dst: Path) -> None:
    for p in dst.parent.glob(dst.name + "*"):
        p.unlink()
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
        assert b.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    finally:
        a.close()
        b.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def latency_stats(samples: list[list[Any]], lo: float, hi: float) -> dict[str, float]:
    """p50 / p99 / max commit latency (ms) and commits/s of the commits started in [lo, hi)."""
    lat = [s[1] * 1000 for s in samples if lo <= s[0] < hi]
    return {
        "commits": len(lat),
        "rate": round(len(lat) / max(hi - lo, 1e-9), 1),
        "p50_ms": round(percentile(lat, 0.50), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "max_ms": round(max(lat, default=0.0), 2),
    }


def one_run(tpl: Path, work: Path, name: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One archive run beside the writer; its figures."""
    from liteshift.archive.move import archive_rows

    db, arc, log = work / "live.db", work / "archive.db", work / "writer.json"
    fresh_copy(tpl, db)
    for p in work.glob("archive.db*"):
        p.unlink()
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    writer = ctx.Process(target=writer_main, args=(str(db), args.writer_rate, seed, str(log), ready, stop))
    load_before = os.getloadavg()[0]
    writer.start()
    try:
        assert ready.wait(60), "the writer did not start"
        base_lo = time.monotonic()
        time.sleep(args.baseline_s)
        lo = time.monotonic()
        batch_rows, budget_s = CONFIGS[name]
        result = archive_rows(
            db, arc, "worklogs", "started", args.cutoff, batch_rows=batch_rows, budget_s=budget_s
        )
        hi = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
        writer.join(60)
        if writer.is_alive():
            writer.kill()
            writer.join()
    samples = json.loads(log.read_text("utf-8"))
    inserts = sum(1 for s in samples if s[2] == "I")
    check = sqlite3.connect(db)
    archived = sqlite3.connect(arc)
    try:
        live_n = check.execute("SELECT count(*) FROM worklogs").fetchone()[0]
        arc_n = archived.execute("SELECT count(*) FROM worklogs").fetchone()[0]
        archived.execute(f"ATTACH DATABASE '{db}' AS live")
        both = archived.execute(
            "SELECT count(*) FROM worklogs a JOIN live.worklogs l ON l.id = a.id"
        ).fetchone()[0]
    finally:
        check.close()
        archived.close()
    assert result.verified and both == 0, (result, both)
    assert live_n + arc_n == args.rows + inserts, (live_n, arc_n, inserts)
    return {
        "config": name,
        "seed": seed,
        "rows_moved": result.deleted,
        "seconds": round(result.seconds, 3),
        "rows_per_s": round(result.deleted / result.seconds),
        "batches": result.batches,
        "mean_batch_rows": round(result.deleted / max(1, result.batches)),
        "longest_txn_ms": round(result.longest_txn_seconds * 1000, 2),
        "kept_changed": result.kept_changed,
        "writer": latency_stats(samples, lo, hi),
        "baseline": latency_stats(samples, base_lo, lo),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def summarize(runs: list[dict[str, Any]]) -> str:
    """Medians per configuration, as a markdown table."""
    lines = [
        "| Config | Runs | Rows/s | Seconds | Batches (mean rows) | Longest txn ms "
        "| Writer p50 / p99 / max ms | Baseline p50 / p99 ms | p99 ratio | Writer commits/s |",
        "|---|---:|---:|---:|---|---:|---|---|---:|---:|",
    ]
    for name in CONFIGS:
        mine = [r for r in runs if r["config"] == name]
        if not mine:
            continue

        def med(get: Any, rs: list[dict[str, Any]] = mine) -> float:
            return float(statistics.median(get(r) for r in rs))

        ratio = med(lambda r: r["writer"]["p99_ms"] / max(r["baseline"]["p99_ms"], 1e-3))
        lines.append(
            f"| {name} | {len(mine)} | {med(lambda r: r['rows_per_s']):,.0f} "
            f"| {med(lambda r: r['seconds']):.1f} "
            f"| {med(lambda r: r['batches']):.0f} ({med(lambda r: r['mean_batch_rows']):,.0f}) "
            f"| {med(lambda r: r['longest_txn_ms']):.1f} "
            f"| {med(lambda r: r['writer']['p50_ms']):.2f} / {med(lambda r: r['writer']['p99_ms']):.1f} / "
            f"{med(lambda r: r['writer']['max_ms']):.1f} "
            f"| {med(lambda r: r['baseline']['p50_ms']):.2f} / {med(lambda r: r['baseline']['p99_ms']):.1f} "
            f"| {ratio:.1f}x | {med(lambda r: r['writer']['rate']):.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cutoff", default="2024-04-01", help="about 1 row in 8 of the demo is older")
    parser.add_argument("--writer-rate", type=float, default=250.0)
    parser.add_argument("--baseline-s", type=float, default=2.0)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "archive")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    tpl = template(args.out, args.rows)
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU, {platform.platform()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for repeat in range(args.repeats):
        order = args.configs[repeat % len(args.configs) :] + args.configs[: repeat % len(args.configs)]
        for name in order:
            run = one_run(tpl, work, name, args, seed=repeat * 10 + args.configs.index(name))
            run["repeat"] = repeat
            runs.append(run)
            print(json.dumps(run), flush=True)
            (args.out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    meta["bench_seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    summary = summarize(runs)
    (args.out / "summary.md").write_text(summary)
    print(summary)
    for p in work.glob("*"):
        p.unlink()


if __name__ == "__main__":
    main()
