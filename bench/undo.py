"""What the sound undo costs: the write ledger's tax on the application's commits, the proof's cost
inside the migration's lock and the rollback's, and a restore under proof against the old
whole-file restore.

For each size a template demo database is built once (liteshift.demo.build_demo_db) and every
measurement gets a fresh copy (sqlite3 backup API). In one run, side by side:

  * ledger tax: one connection commits single-row transactions (UPDATE by random id, INSERT,
    DELETE of a row it inserted, in turn) on worklogs, in blocks of --block commits that alternate
    without and with the ledger's triggers (ABAB...); per-commit latency, p50 and p99 per mode.
    Also one UPDATE of 100,000 rows in a transaction (rolled back), without and with: per-row cost;
  * the proof in the migration: `tasks.backup.backup_database` (watch_writes) and
    `tasks.migrate.apply_migrations` of a no-down migration that updates 10 rows of TABLE, with
    and without a backup (no backup: no proof is made); the write lock each held;
  * the rollback: `tasks.rollback.rollback_database`, a restore under proof of TABLE: the write
    lock it held and the proof's check within it; beside it, the old path's whole-file restore
    (one-step backup API from the backup into a copy of the live file), timed the same way.

TABLE is teams (100 rows at every size), 10 rows rewritten, and worklogs (the size), 10 rows and
then every row rewritten; the table's row count is recorded. Raw figures: OUT/results.json;
summary: OUT/summary.md.

    .venv/bin/python bench/undo.py --rows 1000000 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from liteshift.core import tables  # noqa: E402
from liteshift.core.config import RunConfig  # noqa: E402
from liteshift.core.db import backup_pages, connection, write_transaction  # noqa: E402
from liteshift.demo import build_demo_db  # noqa: E402
from liteshift.migrate import ledger  # noqa: E402  (rebuild's capture triggers: the revert feed)
from liteshift.rebuild import online, schema  # noqa: E402
from liteshift.tasks.backup import backup_database  # noqa: E402
from liteshift.tasks.migrate import apply_migrations  # noqa: E402
from liteshift.tasks.rollback import rollback_database  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fresh_copy(template: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    src, dst = sqlite3.connect(template), sqlite3.connect(target)
    src.backup(dst)
    src.close()
    dst.close()


def template(out: Path, rows: int) -> Path:
    path = out / f"template-{rows}.db"
    if not path.exists():
        start = time.perf_counter()
        build_demo_db(path, rows)
        print(f"built {path.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def set_ledger(db: Path, on: bool) -> None:
    with connection(db) as con, write_transaction(con, db, 5000):
        if on:
            ledger.watch_all(con)
        else:
            ledger.keep_only(con, [])


def set_feed(db: Path, on: bool) -> None:
    """The capture triggers a revert window keeps on the new table (as online._retain_old puts
    them), or none."""
    with connection(db) as con, write_transaction(con, db, 5000):
        n = schema.names("worklogs")
        for name in schema.capture_triggers(con, n):
            con.execute(f"DROP TRIGGER {name}")
        con.execute(f"DROP TABLE IF EXISTS {n.changes}")
        if on:
            for ddl in online._changes_ddl(n, tables.read_table(con, "worklogs")):
                con.execute(ddl)


def write_tax(
    db: Path, rows: int, blocks: int, block: int, switch: Callable[[Path, bool], None]
) -> dict[str, Any]:
    """Per-commit latency of single-row writes, without and with `switch`'s triggers, in
    alternating blocks; and one 100,000-row UPDATE without and with."""
    rng = random.Random(7)
    latencies: dict[str, list[float]] = {"without": [], "with": []}
    con = sqlite3.connect(db, isolation_level=None, timeout=10)
    inserted: list[int] = []
    try:
        for b in range(2 * blocks):
            mode = "without" if b % 2 == 0 else "with"
            switch(db, mode == "with")
            for i in range(block):
                start = time.perf_counter()
                con.execute("BEGIN IMMEDIATE")
                kind = i % 3
                if kind == 0:
                    con.execute("UPDATE worklogs SET comment = 'bench' WHERE id = ?", (rng.randint(1, rows),))
                elif kind == 1:
                    cur = con.execute(
                        "INSERT INTO worklogs (company_id, team_id, jira_instance, author_email, issue_key, "
                        "started, time_spent_seconds, comment) VALUES (1, 1, 'j', 'a@b', 'K-1', "
                        "'2025-01-01 00:00:00', 60, 'bench')"
                    )
                    inserted.append(int(cur.lastrowid or 0))
                else:
                    con.execute("DELETE FROM worklogs WHERE id = ?", (inserted.pop(),))
                con.execute("COMMIT")
                latencies[mode].append(time.perf_counter() - start)
        bulk = {}
        for mode in ("without", "with"):
            switch(db, mode == "with")
            con.execute("BEGIN IMMEDIATE")
            start = time.perf_counter()
            con.execute("UPDATE worklogs SET comment = comment WHERE id <= 100000")
            bulk[mode] = time.perf_counter() - start
            con.execute("ROLLBACK")
    finally:
        con.close()
        switch(db, False)
    summary = {
        mode: {
            "commits": len(v),
            "p50_ms": statistics.median(v) * 1e3,
            "p99_ms": pct(v, 0.99) * 1e3,
        }
        for mode, v in latencies.items()
    }
    summary["p50_ratio"] = summary["with"]["p50_ms"] / summary["without"]["p50_ms"]
    summary["p99_ratio"] = summary["with"]["p99_ms"] / summary["without"]["p99_ms"]
    summary["bulk_100k_update_s"] = bulk
    summary["bulk_per_row_us"] = {k: v / 100_000 * 1e6 for k, v in bulk.items()}
    return summary


def proof_and_restore(template_db: Path, work: Path, table: str, rows: str) -> dict[str, Any]:
    """Apply a no-down migration rewriting `rows` rows ("all", or the first N) of table, with and
    without a backup; roll back."""
    mdir = work / f"migrations-{table}-{rows}"
    mdir.mkdir(exist_ok=True)
    column = "name" if table == "teams" else "comment"
    where = "" if rows == "all" else f" WHERE id <= {int(rows)}"
    (mdir / "001_touch.sql").write_text(
        f"-- migrate:up\nUPDATE {table} SET {column} = {column} || '.'{where};\n"
    )
    db = work / "live.db"
    result: dict[str, Any] = {"table": table, "rows_written": rows}
    with connection(template_db, immutable=True) as con:
        result["table_rows"] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    # Without a backup: the same migration, no proof made.
    fresh_copy(template_db, db)
    cfg = RunConfig(database=db, migrations_dir=mdir, backup_dir=work)
    result["migrate_lock_s_no_proof"] = apply_migrations(cfg).lock_seconds
    # With the backup and the proof, as the flow runs it.
    fresh_copy(template_db, db)
    start = time.perf_counter()
    with connection(db) as con, write_transaction(con, db, 5000) as held:
        ledger.watch_all(con)
    result["watch_all_lock_s"] = held.held
    set_ledger(db, False)
    b = backup_database(cfg, watch_writes=True)
    result["backup_s"] = time.perf_counter() - start
    result["migrate_lock_s_with_proof"] = apply_migrations(cfg, backup_path=b.path).lock_seconds
    start = time.perf_counter()
    r = rollback_database(db, mdir)
    result["rollback_total_s"] = time.perf_counter() - start
    result["rollback_action"] = r.action
    result["restore_lock_s"] = r.lock_seconds
    result["proof_check_s"] = r.proof_seconds
    result["scan_before_lock_s"] = r.scan_seconds
    # The old path: the whole backup copied over the live file by the backup API.
    scratch = work / "scratch.db"
    fresh_copy(template_db, scratch)
    with connection(b.path, immutable=True) as src, connection(scratch) as dst:
        start = time.perf_counter()
        backup_pages(src, dst)
        result["whole_file_restore_s"] = time.perf_counter() - start
    result["file_mb"] = os.path.getsize(b.path) / 1e6
    for p in (Path(b.path), scratch):
        p.unlink(missing_ok=True)
    return result


def summarize(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']}; load {results['load']}",
        "",
        "| rows, triggers | commit p50 without / with | p99 without / with "
        "| bulk UPDATE per row, without / with |",
        "|---|---|---|---|",
    ]
    for size, what in ((z, w) for z in results["sizes"] for w in ("ledger_tax", "feed_tax")):
        t = size[what]
        lines.append(
            f"| {size['rows']:,} {'ledger' if what == 'ledger_tax' else 'revert feed'} "
            f"| {t['without']['p50_ms']:.3f} / {t['with']['p50_ms']:.3f} ms "
            f"({t['p50_ratio']:.2f}x) | {t['without']['p99_ms']:.3f} / {t['with']['p99_ms']:.3f} ms "
            f"({t['p99_ratio']:.2f}x) | {t['bulk_per_row_us']['without']:.2f} / "
            f"{t['bulk_per_row_us']['with']:.2f} us |"
        )
    lines += [
        "",
        "| rows | table (rows written) | ledger install (lock) | migrate lock no proof / with proof "
        "| restore: scan before the lock; lock (proof check) | old whole-file restore | file |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in results["sizes"]:
        for p in size["restores"]:
            lines.append(
                f"| {size['rows']:,} | {p['table']} of {p['table_rows']:,} ({p['rows_written']}) "
                f"| {p['watch_all_lock_s'] * 1e3:.1f} ms | "
                f"{p['migrate_lock_s_no_proof'] * 1e3:.1f} / {p['migrate_lock_s_with_proof'] * 1e3:.1f} ms | "
                f"{p['scan_before_lock_s']:.2f} s; {p['restore_lock_s']:.3f} s "
                f"({p['proof_check_s'] * 1e3:.2f} ms) | "
                f"{p['whole_file_restore_s']:.3f} s | {p['file_mb']:.0f} MB |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--blocks", type=int, default=4, help="blocks per mode (default 4)")
    parser.add_argument("--block", type=int, default=600, help="commits per block (default 600)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "undo")
    parser.add_argument(
        "--plot",
        type=Path,
        nargs="*",
        metavar="REVERT_RESULTS",
        help="only draw bench/undo.png from OUT/results.json and bench/revert.py's results.json files",
    )
    args = parser.parse_args()
    if args.plot is not None:
        plot(args.out, args.plot, ROOT / "bench" / "undo.png")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"SQLite {sqlite3.sqlite_version}",
        "load": os.getloadavg()[0],
        "sizes": [],
    }
    for rows in args.rows:
        tmpl = template(args.out, rows)
        with tempfile.TemporaryDirectory(dir=args.out) as tmp:
            work = Path(tmp)
            db = work / "tax.db"
            fresh_copy(tmpl, db)
            size: dict[str, Any] = {
                "rows": rows,
                "ledger_tax": write_tax(db, rows, args.blocks, args.block, set_ledger),
                "feed_tax": write_tax(db, rows, args.blocks, args.block, set_feed),
            }
            print(json.dumps({k: size[k] for k in ("ledger_tax", "feed_tax")}), flush=True)
            db.unlink()
            size["restores"] = [
                proof_and_restore(tmpl, work, t, n)
                for t, n in (("teams", "10"), ("worklogs", "10"), ("worklogs", "all"))
            ]
            print(json.dumps(size["restores"]), flush=True)
        results["sizes"].append(size)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    summary = summarize(results)
    (args.out / "summary.md").write_text(summary)
    print(summary)


def plot(out: Path, revert_results: list[Path], target: Path) -> None:
    """bench/undo.png: the write lock of each way of undoing, old against new, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    undo = json.loads((out / "results.json").read_text())
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels, old, new = [], [], []
    for size in undo["sizes"]:
        for p in size["restores"]:
            labels.append(f"{size['rows'] // 1_000_000}M: {p['table']}\n({p['rows_written']} rows)")
            old.append(p["whole_file_restore_s"])
            new.append(p["restore_lock_s"])
    x = range(len(labels))
    left.bar([i - 0.2 for i in x], old, 0.4, label="old: whole-file restore, unproven")
    left.bar([i + 0.2 for i in x], new, 0.4, label="restore under the write-ledger proof")
    left.set_xticks(list(x), labels, fontsize=7)
    left.set_yscale("log")
    left.set_ylabel("write lock held (s)")
    left.set_title("Undoing a migration only the backup can undo", fontsize=9)
    left.legend(fontsize=7)
    runs = [r for path in revert_results if path.exists() for r in json.loads(path.read_text())["runs"]]
    names = {
        "blocking": "blocking rebuild back",
        "online": "online, copied anew",
        "kept": "online, kept copy",
    }
    bars = [
        (f"{r['rows'] // 1_000_000}M\n{names[r['mode']]}", r["lock_seconds"], r["writer_max_ms"] / 1e3)
        for r in runs
    ]
    x = range(len(bars))
    right.bar([i - 0.2 for i in x], [b[1] for b in bars], 0.4, label="write lock of the downs' transaction")
    right.bar([i + 0.2 for i in x], [b[2] for b in bars], 0.4, label="writer's longest stall (250 commits/s)")
    right.set_xticks(list(x), [b[0] for b in bars], fontsize=7)
    right.set_yscale("log")
    right.set_ylabel("seconds")
    right.set_title("Reverting migration 002's worklogs rebuild", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main()
