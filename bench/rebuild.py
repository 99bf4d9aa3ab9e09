"""Blocking against online table rebuild of `worklogs`, under a concurrent writer process.

For each size a template demo database is built once (liteshift.demo.build_demo_db, then the
four indexes of migrations/001 applied), so worklogs carries three indexes. Every measured run
gets a fresh copy of the template (sqlite3 backup API). Per repeat, one blocking and one online
run, in alternating order (repeat 0: blocking first, repeat 1: online first, ...).

One run:
  * a writer PROCESS (own connection, WAL, busy_timeout 10000, foreign_keys ON) commits
    single-row transactions at --writer-rate (70% INSERT, 20% UPDATE, 10% DELETE) and logs,
    per commit, BEGIN IMMEDIATE .. COMMIT returned (retries after a busy timeout included);
  * 1 s after the writer is ready, tasks.migrate.apply_migrations runs a migrations dir holding
    only 002_worklogs_rebuild.sql (migrate:up the teams(company_id, id) unique index, then
    migrate:rebuild worklogs with migration 002's definition), rebuild_mode blocking or online;
  * the writer stops 1 s after apply_migrations returns; a parent thread samples the size of
    the database file and its -wal every 50 ms;
  * then: integrity_check, foreign_key_check, worklogs count against the writer's own log, index
    names on worklogs against the names before, no liteshift_* table left behind.

Raw figures: OUT/results.json (rewritten after every run), OUT/runs/*.csv (writer logs, WAL
samples); summary: OUT/summary.md; plot: bench/rebuild.png.

    .venv/bin/python bench/rebuild.py --rows 1000000 10000000 --repeats 3 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIGRATION_NAME = "002_worklogs_rebuild.sql"
TEAMS = 100  # liteshift.demo.TEAMS
COMPANIES = 20  # liteshift.demo.COMPANIES: a team n belongs to company 1 + n % 20


# ---------------------------------------------------------------------------------------------
# The writer process: no liteshift import, only sqlite3.


def writer_main(path: str, rate: float, seed: int, top_id: int, log_path: str, ready: Any, stop: Any) -> None:
    con = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    con.execute("PRAGMA busy_timeout = 10000")
    mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    con.execute("PRAGMA foreign_keys = ON")
    assert mode == "wal", mode
    assert con.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    rng = random.Random(seed)
    period = 1.0 / rate
    rows: list[str] = []
    errors: list[str] = []
    ready.set()
    t_begin = time.perf_counter()
    next_t = t_begin
    while not stop.is_set():
        now = time.perf_counter()
        if now < next_t:
            time.sleep(next_t - now)
        # Paced like arriving requests: slots missed during a stall are caught up afterwards,
        # but at most 1 s worth of them (a longer stall loses the rest).
        next_t = max(next_t + period, time.perf_counter() - 1.0)
        r = rng.random()
        if r < 0.7:
            team = rng.randint(1, TEAMS)
            op, sql = (
                "i",
                (
                    "INSERT INTO worklogs (company_id, team_id, jira_instance, author_email, issue_key, "
                    "started, time_spent_seconds, comment) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                ),
            )
            params: tuple[Any, ...] = (
                1 + team % COMPANIES,
                team,
                rng.choice(("Company Main", "Company Support", "Company Ops")),
                f"user{rng.randint(1, 499)}@example.com",
                f"PRJ-{rng.randint(1, 5000)}",
                f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} 10:00:00",
                60 * rng.randint(1, 480),
                "bench writer",
            )
        elif r < 0.9:
            op, sql = "u", "UPDATE worklogs SET time_spent_seconds = ? WHERE id = ?"
            params = (60 * rng.randint(1, 480), rng.randint(1, top_id))
        else:
            op, sql = "d", "DELETE FROM worklogs WHERE id = ?"
            params = (rng.randint(1, top_id),)
        start = time.perf_counter()
        busy = 0
        while True:
            try:
                con.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    busy += 1  # busy_timeout (10 s) ran out: the same transaction tries again
                    continue
                raise
        locked = time.perf_counter()
        try:
            cur = con.execute(sql, params)
            count, rowid = cur.rowcount, cur.lastrowid
            before_commit = time.perf_counter()
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            errors.append(f"{start:.6f} {op} {exc}")
            continue
        end = time.perf_counter()
        if op == "i":
            top_id = max(top_id, int(rowid))
        # start, latency, wait for the lock, COMMIT alone, op, rows changed, busy timeouts
        latency, wait, commit = end - start, locked - start, end - before_commit
        rows.append(f"{start:.6f},{latency:.6f},{wait:.6f},{commit:.6f},{op},{count},{busy}")
    t_end = time.perf_counter()
    con.close()
    with open(log_path, "w") as fh:
        fh.write(f"# began {t_begin:.6f} ended {t_end:.6f} errors {len(errors)}\n")
        fh.write("start,latency,lock_wait,commit,op,rowcount,busy\n")
        fh.write("\n".join(rows) + "\n")
        for e in errors:
            fh.write(f"# error {e}\n")


def read_writer_log(path: Path) -> dict[str, Any]:
    lines = path.read_text().splitlines()
    head = lines[0].split()
    began, ended, n_errors = float(head[2]), float(head[4]), int(head[6])
    recs = []
    for line in lines[2:]:
        if not line or line.startswith("#"):
            continue
        s, lat, wait, com, op, cnt, busy = line.split(",")
        recs.append((float(s), float(lat), float(wait), float(com), op, int(cnt), int(busy)))
    return {"began": began, "ended": ended, "errors": n_errors, "records": recs}


# ---------------------------------------------------------------------------------------------
# Parent side.


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(
        next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1]
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(path) + suffix)
        if p.exists():
            p.unlink()


def keep_failed(db: Path, tag: str) -> None:
    """Move a failed run's database (and its -wal, -shm) aside as failed-TAG.db for a look."""
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(db) + suffix)
        if src.exists():
            os.replace(src, db.with_name(f"failed-{tag}.db{suffix}"))


def worklogs_indexes(con: sqlite3.Connection) -> list[str]:
    return sorted(
        r[0]
        for r in con.execute("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'worklogs'")
    )


def build_template(out: Path, rows: int) -> tuple[Path, dict[str, Any]]:
    """The demo database with migration 001's four indexes; built once per size, then reused."""
    from liteshift.core.db import connection
    from liteshift.core.migrations import parse_migration
    from liteshift.demo import build_demo_db

    path = out / f"template-{rows}.db"
    meta_path = out / f"template-{rows}.json"
    if path.exists() and meta_path.exists():
        return path, json.loads(meta_path.read_text())
    tmp = out / f"template-{rows}.building.db"
    remove_db(tmp)
    remove_db(path)
    t0 = time.perf_counter()
    build_demo_db(tmp, rows)
    built = time.perf_counter() - t0
    m001 = parse_migration(ROOT / "migrations" / "001_add_composite_indexes.sql")
    t1 = time.perf_counter()
    with connection(tmp) as con:
        con.execute("BEGIN IMMEDIATE")
        for stmt in m001.up:  # the four CREATE INDEX and their ANALYZE, as migration 001 runs them
            con.execute(stmt)
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        meta = {
            "rows": con.execute("SELECT count(*) FROM worklogs").fetchone()[0],
            "max_id": con.execute("SELECT max(id) FROM worklogs").fetchone()[0],
            "worklogs_indexes": worklogs_indexes(con),
            "bytes": os.path.getsize(tmp),
            "build_seconds": built,
            "index_seconds": time.perf_counter() - t1,
        }
    os.replace(tmp, path)
    remove_db(tmp)
    meta_path.write_text(json.dumps(meta, indent=1))
    return path, meta


def fresh_copy(template: Path, target: Path) -> float:
    remove_db(target)
    t0 = time.perf_counter()
    src = sqlite3.connect(f"file:{template}?mode=ro", uri=True)
    dst = sqlite3.connect(str(target), isolation_level=None)
    try:
        src.backup(dst, pages=-1)
    finally:
        src.close()
    mode = dst.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    dst.close()
    assert mode == "wal", mode
    return time.perf_counter() - t0


def write_migration(mdir: Path) -> Path:
    from liteshift.core.migrations import parse_migration

    m002 = parse_migration(ROOT / "migrations" / "002_multi_tenant_constraints.sql")
    spec = next(r for r in m002.rebuilds if r.table == "worklogs")
    mdir.mkdir(parents=True, exist_ok=True)
    for p in mdir.glob("*.sql"):
        p.unlink()
    path = mdir / MIGRATION_NAME
    path.write_text(
        "-- bench/rebuild.py: migration 002's worklogs rebuild alone.\n\n"
        "-- migrate:up\n"
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_teams_company_id ON teams(company_id, id);\n\n"
        "-- migrate:rebuild worklogs\n"
        f"{spec.create_sql};\n\n"
        "-- migrate:down\n"
        "DROP INDEX IF EXISTS idx_teams_company_id;\n"
    )
    parsed = parse_migration(path)
    assert len(parsed.rebuilds) == 1 and parsed.rebuilds[0].create_sql == spec.create_sql
    return path


class Sampler(threading.Thread):
    """Sizes of the database file and its -wal every `every` seconds."""

    def __init__(self, db: Path, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.db, self.wal, self.every = str(db), str(db) + "-wal", every
        self.samples: list[tuple[float, int, int]] = []
        self.halt = threading.Event()

    @staticmethod
    def _size(p: str) -> int:
        try:
            return os.stat(p).st_size
        except FileNotFoundError:
            return 0

    def run(self) -> None:
        while not self.halt.is_set():
            self.samples.append((time.perf_counter(), self._size(self.db), self._size(self.wal)))
            self.halt.wait(self.every)
        self.samples.append((time.perf_counter(), self._size(self.db), self._size(self.wal)))


class DropOldTimer:
    """Times liteshift's own write transactions after the COMMIT: drop_old_tables' batches.

    RebuildStats.longest_txn_seconds covers the copy and reconcile; the emptying of the old
    table runs later, in apply_migrations. Instrumented without editing liteshift, by wrapping
    names in liteshift.rebuild.online for the duration of a run: drop_old_tables (its total), and
    write_transaction (each batch, COMMIT included) or, in the older code that had no
    write_transaction, begin_immediate and faults.point (each batch up to its COMMIT).
    """

    def __init__(self) -> None:
        import liteshift.core.faults as faults
        import liteshift.rebuild.online as rebuild

        self.rebuild, self.faults = rebuild, faults
        self.saved: list[tuple[Any, str, Any]] = []
        self.active = False
        self.locked_at = 0.0
        self.txns: list[float] = []
        self.seconds = 0.0

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self.saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def __enter__(self) -> DropOldTimer:
        timer, rb = self, self.rebuild
        orig_drop = rb.drop_old_tables

        def drop(*a: Any, **k: Any) -> int:
            t0 = time.perf_counter()
            timer.active = True
            try:
                return int(orig_drop(*a, **k))
            finally:
                timer.active = False
                timer.seconds = time.perf_counter() - t0

        self._patch(rb, "drop_old_tables", drop)
        if hasattr(rb, "write_transaction"):
            orig_wt = rb.write_transaction

            @contextmanager
            def wt(*a: Any, **k: Any) -> Iterator[Any]:
                with orig_wt(*a, **k) as held:
                    yield held
                if timer.active:
                    timer.txns.append(held.held)

            self._patch(rb, "write_transaction", wt)
        elif hasattr(rb, "begin_immediate"):
            orig_begin, orig_point = rb.begin_immediate, self.faults.point

            def begin(*a: Any, **k: Any) -> None:
                orig_begin(*a, **k)
                timer.locked_at = time.perf_counter()

            def point(name: Any) -> None:
                if timer.active and name == "rebuild-dropping-old":
                    timer.txns.append(time.perf_counter() - timer.locked_at)
                orig_point(name)

            self._patch(rb, "begin_immediate", begin)
            self._patch(self.faults, "point", point)
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, value in reversed(self.saved):
            setattr(owner, name, value)


def check(db: Path, initial: int, before_indexes: list[str], writer: dict[str, Any]) -> dict[str, Any]:
    con = sqlite3.connect(str(db), isolation_level=None)
    try:
        t0 = time.perf_counter()
        integrity = [r[0] for r in con.execute("PRAGMA integrity_check")]
        integrity_s = time.perf_counter() - t0
        fk = con.execute("PRAGMA foreign_key_check").fetchall()
        count = con.execute("SELECT count(*) FROM worklogs").fetchone()[0]
        indexes = worklogs_indexes(con)
        leftovers = [
            r[0]
            for r in con.execute("SELECT name FROM sqlite_schema WHERE name LIKE 'liteshift\\_%' ESCAPE '\\'")
        ]
        state_rows = (
            con.execute("SELECT count(*) FROM liteshift_rebuilds").fetchone()[0]
            if "liteshift_rebuilds" in leftovers
            else 0
        )
        sql = con.execute("SELECT sql FROM sqlite_schema WHERE name = 'worklogs'").fetchone()[0]
        applied = (
            con.execute("SELECT count(*) FROM liteshift_migrations").fetchone()[0]
            if any(r[0] == "liteshift_migrations" for r in con.execute("SELECT name FROM sqlite_schema"))
            else None
        )
    finally:
        con.close()
    recs = writer["records"]
    inserts = sum(1 for r in recs if r[4] == "i" and r[5] == 1)
    deletes = sum(1 for r in recs if r[4] == "d" and r[5] == 1)
    expected = initial + inserts - deletes
    ok = {
        "integrity_ok": integrity == ["ok"],
        "foreign_keys_ok": not fk,
        "count_ok": count == expected,
        "indexes_ok": indexes == before_indexes,
        "new_definition": "worklog_team_in_company" in sql and "started_is_iso8601" in sql,
        "writer_errors_none": writer["errors"] == 0,
        # liteshift's own tables stay (tracking, meta, rebuild state); its rebuild objects must not
        "no_rebuild_leftovers": set(leftovers)
        <= {"liteshift_migrations", "liteshift_meta", "liteshift_rebuilds"}
        and not state_rows,
    }
    return {
        **ok,
        "all_ok": all(ok.values()),
        "integrity": integrity[:5],
        "integrity_seconds": integrity_s,
        "fk_problems": [list(r) for r in fk[:5]],
        "worklogs_count": count,
        "expected_count": expected,
        "writer_inserts": inserts,
        "writer_deletes": deletes,
        "indexes_after": indexes,
        "liteshift_objects_left": leftovers,
        "tracking_rows": applied,
    }


def time_fk_check(db: Path, repeats: int = 3) -> list[float]:
    """PRAGMA foreign_key_check(worklogs) alone, on a migrated copy (new definition: three keys)."""
    con = sqlite3.connect(str(db), isolation_level=None)
    out = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            problems = con.execute("PRAGMA foreign_key_check(worklogs)").fetchall()
            out.append(time.perf_counter() - t0)
            assert not problems, problems[:3]
    finally:
        con.close()
    return out


def probe_migrator(path: str, hold: float, gap: float, seconds: float, ready: Any) -> None:
    con = sqlite3.connect(path, isolation_level=None, timeout=10)
    ready.wait()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        con.execute("BEGIN IMMEDIATE")
        time.sleep(hold)  # holds the write lock, CPU idle
        con.execute("COMMIT")
        time.sleep(gap)
    con.close()


def probe_writer(path: str, seconds: float, ready: Any, q: Any) -> None:
    con = sqlite3.connect(path, isolation_level=None, timeout=10)
    con.execute("PRAGMA busy_timeout = 10000")
    ready.set()
    lat = []
    end = nxt = time.perf_counter()
    end += seconds
    while time.perf_counter() < end:
        now = time.perf_counter()
        if now < nxt:
            time.sleep(nxt - now)
        nxt += 0.004
        t = time.perf_counter()
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO t (x) VALUES (1)")
        con.execute("COMMIT")
        lat.append(time.perf_counter() - t)
    q.put(lat)


def starvation_probe(out: Path, seconds: float = 12.0) -> None:
    """Back-to-back write transactions (hold H ms, pause P ms) against a 250/s writer waiting in
    SQLite's default busy handler: the writer's longest wait for P = 5 ms (drop_old_tables'
    pause) against P = H (the copy's pause_ratio 1.0). No liteshift code involved."""
    path = out / "work" / "probe.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_db(path)
    con = sqlite3.connect(str(path), isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE t (x)")
    con.close()
    ctx = mp.get_context("spawn")
    lines = [
        "| hold ms | pause ms | writer commits | p50 ms | p99 ms | max ms | commits > 500 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for hold, gap in ((0.05, 0.005), (0.05, 0.05), (0.09, 0.005), (0.09, 0.09)):
        ready, q = ctx.Event(), ctx.Queue()
        m = ctx.Process(target=probe_migrator, args=(str(path), hold, gap, seconds, ready))
        w = ctx.Process(target=probe_writer, args=(str(path), seconds, ready, q))
        m.start()
        w.start()
        lat = sorted(q.get())
        w.join()
        m.join()
        n = len(lat)
        lines.append(
            f"| {hold * 1000:.0f} | {gap * 1000:.0f} | {n} | {1000 * pct(lat, 0.5):.1f} "
            f"| {1000 * pct(lat, 0.99):.1f} | {1000 * lat[-1]:,.0f} | {sum(x > 0.5 for x in lat)} |"
        )
    remove_db(path)
    text = (
        f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {seconds:.0f} s each, {uptime()}\n"
        + "\n".join(lines)
        + "\n"
    )
    (out / "starvation-probe.md").write_text(text)
    print(text)


def fk_check_only(out: Path, sizes: list[int]) -> None:
    """PRAGMA foreign_key_check(worklogs) alone per size, without the writer: on the template (old
    definition, two single-column keys) and after a blocking rebuild of a fresh copy (the new
    definition: the two keys and the composite one). Into OUT/fk-check.json."""
    from liteshift.core.config import RunConfig
    from liteshift.tasks.migrate import apply_migrations

    work, mdir = out / "work", out / "migrations"
    work.mkdir(exist_ok=True)
    write_migration(mdir)
    path = out / "fk-check.json"
    found = json.loads(path.read_text()) if path.exists() else {}
    for rows in sizes:
        template, _ = build_template(out, rows)
        db = work / "fk.db"
        fresh_copy(template, db)
        before = time_fk_check(db)
        applied = apply_migrations(RunConfig(database=db, migrations_dir=mdir, rebuild_mode="blocking"))
        after = time_fk_check(db)
        found[str(rows)] = {
            "old_definition_s": before,
            "new_definition_s": after,
            "blocking_lock_seconds_no_writer": applied.lock_seconds,
            "load": loadavg(),
        }
        remove_db(db)
        path.write_text(json.dumps(found, indent=1))
        print(f"[{rows:,}] foreign_key_check(worklogs): old {before} new {after}", flush=True)


MODES = ("blocking", "online", "online-prev", "online-ownckpt")
# Online runs with another throttle than the default, to measure a change side by side.
VARIANTS: dict[str, dict[str, Any]] = {
    "online-prev": {"pause_ratio": 1.0},  # the pause before 0.5
    "online-ownckpt": {"own_checkpoints": True},  # liteshift's own checkpoints after each COMMIT
}


@contextmanager
def throttle_variant(mode: str) -> Iterator[None]:
    """The online rebuild with VARIANTS[mode]'s throttle fields, for the run."""
    if mode not in VARIANTS:
        yield
        return
    import liteshift.tasks.migrate as migrate
    from liteshift.core.throttle import Throttle

    before = migrate._throttle

    def throttle(cfg: Any, rows: int = Throttle.rows) -> Throttle:
        return Throttle(wal_limit_mb=cfg.wal_limit_mb, rows=rows, **VARIANTS[mode])

    migrate._throttle = throttle  # type: ignore[assignment]
    try:
        yield
    finally:
        migrate._throttle = before


def one_run(
    template: Path,
    meta: dict[str, Any],
    mdir: Path,
    work: Path,
    runs_dir: Path,
    mode: str,
    rate: float,
    seed: int,
    tag: str,
) -> dict[str, Any]:
    from liteshift.core.config import RunConfig
    from liteshift.tasks.migrate import apply_migrations

    db = work / "run.db"
    copy_s = fresh_copy(template, db)
    db_before = os.path.getsize(db)
    wal_before = Sampler._size(str(db) + "-wal")
    load_before = loadavg()

    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    log_path = runs_dir / f"{tag}-writer.csv"
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
    # No revert window: the old table is emptied and dropped within the run, as the drop-old
    # phase measures (with one, it stays fed for a revert; bench/revert.py measures that).
    cfg = RunConfig(
        database=db,
        migrations_dir=mdir,
        rebuild_mode=mode.split("-")[0],
        report_dir=work / "reports",
        revert_window_h=0,
    )
    error, trace = None, None
    with DropOldTimer() as dropped, throttle_variant(mode):
        t0 = time.perf_counter()
        try:
            applied = apply_migrations(cfg)
        except Exception as exc:  # reported, not hidden: the run is recorded as failed
            applied, error = None, f"{type(exc).__name__}: {exc}"
            trace = traceback.format_exc()
        t1 = time.perf_counter()
    time.sleep(1.0)
    stop.set()
    proc.join(120)
    if proc.is_alive():
        proc.kill()
        raise RuntimeError("writer did not stop")
    sampler.halt.set()
    sampler.join()
    load_after = loadavg()
    writer = read_writer_log(log_path)
    recs = writer["records"]

    samples = sampler.samples
    with (runs_dir / f"{tag}-sizes.csv").open("w") as fh:
        fh.write("t,db,wal\n")
        fh.writelines(f"{t - t0:.3f},{d},{w}\n" for t, d, w in samples)
    peak_wal = max(w for _, _, w in samples)
    peak_total = max(d + w for _, d, w in samples)
    db_after = os.path.getsize(db)

    lat = [r[1] for r in recs]
    span = writer["ended"] - writer["began"]
    during = [r for r in recs if t0 <= r[0] + r[1] <= t1]
    result: dict[str, Any] = {
        "mode": mode,
        "tag": tag,
        "error": error,
        "traceback": trace,
        "copy_template_seconds": copy_s,
        "load_before": load_before,
        "load_after": load_after,
        "apply_wall_seconds": t1 - t0,
        "t0_perf_counter": t0,
        "writer": {
            "commits": len(recs),
            "seconds": span,
            "commits_per_s": len(recs) / span,
            "commits_per_s_during_apply": len(during) / (t1 - t0),
            "p50_ms": 1000 * pct(lat, 0.5),
            "p99_ms": 1000 * pct(lat, 0.99),
            "max_ms": 1000 * max(lat),
            "max_at_s": (max(recs, key=lambda r: r[1])[0] - t0) if recs else None,
            "commit_p99_ms": 1000 * pct([r[3] for r in recs], 0.99),
            "commit_max_ms": 1000 * max(r[3] for r in recs),
            "busy_timeouts": sum(r[6] for r in recs),
            "errors": writer["errors"],
            "ops": {op: sum(1 for r in recs if r[4] == op) for op in "iud"},
            "updates_hit": sum(1 for r in recs if r[4] == "u" and r[5] == 1),
        },
        "sizes": {
            "db_before": db_before,
            "wal_before": wal_before,
            "db_after": db_after,
            "wal_after": Sampler._size(str(db) + "-wal"),
            "peak_wal": peak_wal,
            "peak_db_plus_wal": peak_total,
            "disk_needed": peak_total - db_before,
            "samples": len(samples),
        },
    }
    if applied is not None:
        st = applied.rebuilds[0]
        result["migration"] = {
            "lock_seconds": applied.lock_seconds,
            "lock_wait_seconds": applied.lock_wait_seconds,
            "locked_at_s": applied.locked_at - t0,
            "checkpoint_seconds": applied.checkpoint_seconds,
            "before_lock_seconds": applied.locked_at - applied.lock_wait_seconds - t0,
            "drop_old_seconds": dropped.seconds,
            "drop_old_txns": len(dropped.txns),
            "drop_old_longest_txn_seconds": max(dropped.txns, default=0.0),
            "old_rows_freed": applied.old_rows_freed,
            "rebuild": st.as_dict(),
        }
        # Commits that returned while the migration's write lock was held (expect 0; 10 ms of
        # slack at each edge for the two processes' clock reads).
        lo, hi = applied.locked_at + 0.01, applied.locked_at + applied.lock_seconds - 0.01
        result["writer"]["commits_inside_lock"] = sum(1 for r in recs if lo < r[0] + r[1] < hi)
        result["check"] = check(db, int(meta["rows"]), meta["worklogs_indexes"], writer)
    return result


def phase_stats(run: dict[str, Any], log: dict[str, Any]) -> dict[str, Any]:
    """The writer's commits by the phase of apply_migrations they fall in.

    lock: commits whose BEGIN..COMMIT overlaps the migration's write-lock window (blocking: the
    whole rebuild; online: the cut-over); of the others, by start time, copy: before the lock
    (the writer's idle second, and online: start_online, copy and reconcile batches); drop-old:
    after the lock until apply_migrations returned (checkpoint; online: drop_old_tables).
    beyond_lock_ms: the longest commit latency minus its overlap with the lock window, i.e. the
    longest stall the migration's write-lock window does not account for.
    """
    recs = log["records"]
    if "t0_perf_counter" in run:
        t0 = run["t0_perf_counter"]
    else:  # runs recorded before t0 was saved: max_at_s is (start of the longest commit) - t0
        top = max(recs, key=lambda r: r[1])
        t0 = top[0] - run["writer"]["max_at_s"]
    mig = run["migration"]
    lock0 = t0 + mig["locked_at_s"]
    lock1 = lock0 + mig["lock_seconds"]
    t1 = t0 + run["apply_wall_seconds"]
    groups: dict[str, list[float]] = {"copy": [], "lock": [], "drop-old": []}
    for r in recs:
        if r[0] < lock1 and r[0] + r[1] > lock0:
            groups["lock"].append(r[1])
        elif r[0] < lock0:
            groups["copy"].append(r[1])
        elif r[0] < t1:
            groups["drop-old"].append(r[1])
    spans = {"copy": lock0 - t0, "lock": lock1 - lock0, "drop-old": t1 - lock1}
    out: dict[str, Any] = {}
    for name, lat in groups.items():
        out[name] = {
            "seconds": spans[name],
            "commits": len(lat),
            "p50_ms": 1000 * pct(lat, 0.5) if lat else None,
            "p99_ms": 1000 * pct(lat, 0.99) if lat else None,
            "max_ms": 1000 * max(lat) if lat else None,
            "over_100ms": sum(1 for x in lat if x > 0.1),
            "over_500ms": sum(1 for x in lat if x > 0.5),
        }
    beyond = [r[1] - max(0.0, min(r[0] + r[1], lock1) - max(r[0], lock0)) for r in recs]
    i = max(range(len(recs)), key=lambda k: beyond[k])
    out["beyond_lock_ms"] = 1000 * beyond[i]
    out["beyond_lock_at_s"] = recs[i][0] - t0
    return out


def add_phases(results: dict[str, Any], runs_dir: Path) -> None:
    for s in results["sizes"].values():
        for run in s["runs"]:
            log_path = runs_dir / f"{run['tag']}-writer.csv"
            if run.get("migration") and log_path.exists():
                run["writer_phases"] = phase_stats(run, read_writer_log(log_path))


def phase_table(results: dict[str, Any]) -> str:
    med = statistics.median
    lines = [
        "| Rows | Mode | copy phase: commits, p99 ms, max ms | lock phase: s, max ms "
        "| drop-old phase: s, commits, "
        "p99 ms, max ms, commits > 500 ms | longest stall beyond the lock window ms |",
        "|---:|---|---|---|---|---:|",
    ]
    for size, s in results["sizes"].items():
        for mode in MODES:
            rs = [r["writer_phases"] for r in s["runs"] if r["mode"] == mode and r.get("writer_phases")]
            if not rs:
                continue

            def m(phase: str, key: str, rs: list[dict[str, Any]] = rs) -> float:
                vals = [r[phase][key] for r in rs if r[phase][key] is not None]
                return med(vals) if vals else float("nan")

            lines.append(
                f"| {int(size):,} | {mode} | {m('copy', 'commits'):.0f}, {m('copy', 'p99_ms'):.1f}, "
                f"{m('copy', 'max_ms'):.0f} | {m('lock', 'seconds'):.2f}, {m('lock', 'max_ms'):,.0f} "
                f"| {m('drop-old', 'seconds'):.1f}, {m('drop-old', 'commits'):.0f}, "
                f"{m('drop-old', 'p99_ms'):.1f}, {m('drop-old', 'max_ms'):,.0f}, "
                f"{m('drop-old', 'over_500ms'):.0f} "
                f"| {med([r['beyond_lock_ms'] for r in rs]):,.0f} |"
            )
    return ("\n".join(lines) + "\n").replace("nan", "n/m")


def summarize(results: dict[str, Any]) -> str:
    med = statistics.median
    lines = [
        "| Rows | Runs (b/o) | Blocking lock window s | Online cut-over s (lock window s) "
        "| Ratio blocking/online lock | Writer max stall ms blocking / online "
        "| Writer p99 ms blocking / online "
        "| Writer commits/s blocking / online | apply wall s blocking / online (ratio o/b) "
        "| WAL peak MB blocking / online | Disk needed MB blocking / online | FK check alone s "
        "| All checks ok |",
        "|---:|---|---:|---:|---:|---|---|---|---|---|---|---:|---|",
    ]
    detail = [
        "| Rows | Mode | Copy s | Batches | Backlog at cut-over | Longest liteshift txn s (copy) "
        "| Drop-old s (txns, longest) | Checkpoint s | Busy timeouts | Commits inside lock "
        "| DB MB before / after |",
        "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for size, s in results["sizes"].items():
        runs = {
            m: [r for r in s["runs"] if r["mode"] == m and r.get("migration")] for m in ("blocking", "online")
        }
        b, o = runs["blocking"], runs["online"]
        if not b and not o:
            continue

        def m(rs: list[dict[str, Any]], *keys: str) -> float:
            vals = []
            for r in rs:
                v: Any = r
                for k in keys:
                    v = v[k]
                vals.append(v)
            return med(vals) if vals else float("nan")

        bl, ol = m(b, "migration", "lock_seconds"), m(o, "migration", "lock_seconds")
        oc = m(o, "migration", "rebuild", "cutover_seconds")
        bw, ow = m(b, "apply_wall_seconds"), m(o, "apply_wall_seconds")
        ok = all(r["check"]["all_ok"] for r in b + o)
        fk = med(s["fk_check_seconds"]) if s.get("fk_check_seconds") else float("nan")
        lines.append(
            f"| {int(size):,} | {len(b)}/{len(o)} | {bl:.2f} | {oc:.2f} ({ol:.2f}) | **{bl / ol:.1f}x** "
            f"| {m(b, 'writer', 'max_ms'):,.0f} / {m(o, 'writer', 'max_ms'):,.0f} "
            f"| {m(b, 'writer', 'p99_ms'):,.1f} / {m(o, 'writer', 'p99_ms'):,.1f} "
            f"| {m(b, 'writer', 'commits_per_s'):.0f} / {m(o, 'writer', 'commits_per_s'):.0f} "
            f"| {bw:.1f} / {ow:.1f} ({ow / bw:.2f}x) "
            f"| {m(b, 'sizes', 'peak_wal') / 1e6:,.0f} / {m(o, 'sizes', 'peak_wal') / 1e6:,.0f} "
            f"| {m(b, 'sizes', 'disk_needed') / 1e6:,.0f} / {m(o, 'sizes', 'disk_needed') / 1e6:,.0f} "
            f"| {fk:.2f} | {'yes' if ok else '**NO**'} |"
        )
        for mode in MODES:
            rs = [r for r in s["runs"] if r["mode"] == mode and r.get("migration")]
            if not rs:
                continue
            detail.append(
                f"| {int(size):,} | {mode} | {m(rs, 'migration', 'rebuild', 'copy_seconds'):.2f} "
                f"| {m(rs, 'migration', 'rebuild', 'batches'):.0f} "
                f"| {m(rs, 'migration', 'rebuild', 'backlog_at_cutover'):.0f} "
                f"| {m(rs, 'migration', 'rebuild', 'longest_txn_seconds'):.3f} "
                f"| {m(rs, 'migration', 'drop_old_seconds'):.1f} ({m(rs, 'migration', 'drop_old_txns'):.0f}, "
                f"{m(rs, 'migration', 'drop_old_longest_txn_seconds'):.3f}) "
                f"| {m(rs, 'migration', 'checkpoint_seconds'):.2f} | {m(rs, 'writer', 'busy_timeouts'):.0f} "
                f"| {m(rs, 'writer', 'commits_inside_lock'):.0f} "
                f"| {m(rs, 'sizes', 'db_before') / 1e6:,.0f} / {m(rs, 'sizes', 'db_after') / 1e6:,.0f} |"
            )
    text = "\n".join(lines) + "\n\n" + "\n".join(detail) + "\n"
    return text.replace("**nanx**", "n/m").replace("nanx", "n/m").replace("nan", "n/m")


def plot(
    results: dict[str, Any],
    path: Path,
    overlay: dict[str, Any] | None = None,
    overlay_label: str = "",
    main_label: str = "",
) -> None:
    """Two panels; `overlay`: another results file (e.g. a rerun on newer code), hollow markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    sizes = [k for k, s in results["sizes"].items() if any(r.get("migration") for r in s["runs"])]
    xs = [int(k) for k in sizes]

    def series(mode: str, fn: Any) -> tuple[list[float], list[float], list[float]]:
        med, lo, hi = [], [], []
        for k in sizes:
            vals = [fn(r) for r in results["sizes"][k]["runs"] if r["mode"] == mode and r.get("migration")]
            if not vals:
                med.append(float("nan"))
                lo.append(0.0)
                hi.append(0.0)
                continue
            med.append(statistics.median(vals))
            lo.append(statistics.median(vals) - min(vals))
            hi.append(max(vals) - statistics.median(vals))
        return med, lo, hi

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, items, title, ylabel in (
        (
            a1,
            [
                (
                    "blocking: write-lock window",
                    "blocking",
                    lambda r: r["migration"]["lock_seconds"],
                    "o-",
                    "C3",
                ),
                (
                    "online: cut-over (lock window)",
                    "online",
                    lambda r: r["migration"]["lock_seconds"],
                    "s-",
                    "C0",
                ),
                (
                    "online: longest copy txn",
                    "online",
                    lambda r: r["migration"]["rebuild"]["longest_txn_seconds"],
                    "^:",
                    "C2",
                ),
            ],
            "Write-lock window of the migration",
            "seconds (log)",
        ),
        (
            a2,
            [
                ("blocking", "blocking", lambda r: r["writer"]["max_ms"] / 1000, "o-", "C3"),
                ("online", "online", lambda r: r["writer"]["max_ms"] / 1000, "s-", "C0"),
                ("blocking p99", "blocking", lambda r: r["writer"]["p99_ms"] / 1000, "o:", "salmon"),
                ("online p99", "online", lambda r: r["writer"]["p99_ms"] / 1000, "s:", "lightblue"),
            ],
            "Concurrent writer: longest commit stall",
            "seconds (log)",
        ),
    ):
        for label, mode, fn, style, color in items:
            med, lo, hi = series(mode, fn)
            name = f"{label}, {main_label}" if main_label else label
            ax.errorbar(xs, med, yerr=[lo, hi], fmt=style, color=color, label=name, capsize=3)
        for label, mode, fn, style, color in items if overlay else ():
            assert overlay is not None
            osz = [k for k, v in overlay["sizes"].items() if any(r["mode"] == mode for r in v["runs"])]
            for k in osz:
                vals = [
                    fn(r) for r in overlay["sizes"][k]["runs"] if r["mode"] == mode and r.get("migration")
                ]
                mid = statistics.median(vals)
                ax.errorbar(
                    [int(k) * 1.04],
                    [mid],
                    yerr=[[mid - min(vals)], [max(vals) - mid]],
                    fmt=style[0],
                    mfc="white",
                    color=color,
                    capsize=3,
                    label=f"{label}, {overlay_label}",
                )
        if ax is a1:
            fk = [statistics.median(results["sizes"][k]["fk_check_seconds"] or [float("nan")]) for k in sizes]
            ax.plot(xs, fk, "x--", color="gray", label="PRAGMA foreign_key_check(worklogs) alone")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("worklogs rows")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:,}" for x in xs])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("liteshift rebuild of worklogs: blocking vs online (medians, bars: min-max)", fontsize=11)
    missing = [
        f"{int(k):,}" for k in sizes if not any(r["mode"] == "online" for r in results["sizes"][k]["runs"])
    ]
    if missing:
        fig.text(
            0.5,
            0.005,
            f"online not measured at {', '.join(missing)} rows (see RESULTS-rebuild.md)",
            ha="center",
            fontsize=8,
            color="gray",
        )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)


def report(
    results: dict[str, Any],
    out: Path,
    plot_path: Path,
    overlay: Path | None = None,
    overlay_label: str = "",
    label: str = "",
) -> None:
    """Writer phases added to results.json; summary.md (three tables) and the plot."""
    add_phases(results, out / "runs")
    fk_path = out / "fk-check.json"
    if fk_path.exists():  # sizes whose online run did not finish: the --fk-check-only figures
        for size, fk in json.loads(fk_path.read_text()).items():
            s = results["sizes"].get(size)
            if s is not None and not s.get("fk_check_seconds"):
                s["fk_check_seconds"] = fk["new_definition_s"]
                s["fk_check_source"] = "fk-check.json (--fk-check-only, no writer)"
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = summarize(results) + "\n" + phase_table(results)
    (out / "summary.md").write_text(text)
    plot(results, plot_path, json.loads(overlay.read_text()) if overlay else None, overlay_label, label)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, nargs="+", default=[3], help="one N, or one per --rows size")
    ap.add_argument("--writer-rate", type=float, default=250.0, help="writer commits per second")
    ap.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=["blocking", "online"],
        help="run each, in turn first per repeat (online-*: the online rebuild with a VARIANTS throttle)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "rebuild")
    ap.add_argument("--plot", type=Path, default=ROOT / "bench" / "rebuild.png")
    ap.add_argument("--starvation-probe", action="store_true", help="busy-handler starvation probe only")
    ap.add_argument("--fk-check-only", action="store_true", help="time foreign_key_check(worklogs) alone")
    ap.add_argument("--overlay", type=Path, help="with --report-only: another results.json drawn hollow")
    ap.add_argument("--label", default="", help="with --report-only: legend suffix of the main results")
    ap.add_argument("--overlay-label", default="overlay", help="legend suffix of --overlay")
    ap.add_argument("--report-only", action="store_true", help="redo summary and plot from OUT/results.json")
    args = ap.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    if args.starvation_probe:
        starvation_probe(out)
        return
    if args.fk_check_only:
        fk_check_only(out, args.rows)
        return
    if args.report_only:
        results = json.loads(results_path.read_text())
        report(results, out, args.plot, args.overlay, args.overlay_label, args.label)
        return
    repeats = args.repeats * len(args.rows) if len(args.repeats) == 1 else args.repeats
    if len(repeats) != len(args.rows):
        ap.error("--repeats takes one value or one per --rows size")
    work, runs_dir, mdir = out / "work", out / "runs", out / "migrations"
    work.mkdir(exist_ok=True)
    runs_dir.mkdir(exist_ok=True)
    write_migration(mdir)
    results: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/rebuild.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "uptime_before": uptime(),
        "writer_rate": args.writer_rate,
        "code": {  # the liteshift code this run imported (others may edit it meanwhile)
            f: {
                "sha256": hashlib.sha256((ROOT / f).read_bytes()).hexdigest()[:16],
                "mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime((ROOT / f).stat().st_mtime)),
            }
            for f in (
                "liteshift/rebuild/online.py",
                "liteshift/rebuild/blocking.py",
                "liteshift/rebuild/schema.py",
                "tasks/migrate.py",
                "liteshift/core/db.py",
                "liteshift/rebuild/constraints.py",
            )
            if (ROOT / f).exists()
        },
        "sizes": {},
    }
    wall0 = time.perf_counter()

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1))

    for rows, reps in zip(args.rows, repeats, strict=True):
        t0 = time.perf_counter()
        template, meta = build_template(out, rows)
        mb, took = meta["bytes"] / 1e6, time.perf_counter() - t0
        print(f"[{rows:,}] template {template.name}: {mb:,.0f} MB ({took:.1f} s)", flush=True)
        entry: dict[str, Any] = {"template": meta, "runs": [], "fk_check_seconds": []}
        results["sizes"][str(rows)] = entry
        for rep in range(reps):
            order = args.modes[rep % len(args.modes) :] + args.modes[: rep % len(args.modes)]
            for mode in order:
                tag = f"{rows}-{mode}-{rep}"
                r = one_run(
                    template,
                    meta,
                    mdir,
                    work,
                    runs_dir,
                    mode,
                    args.writer_rate,
                    1000 * rep + len(entry["runs"]),
                    tag,
                )
                r["repeat"] = rep
                entry["runs"].append(r)
                if r.get("error") is None and mode != "blocking" and not entry["fk_check_seconds"]:
                    entry["fk_check_seconds"] = time_fk_check(work / "run.db")
                if r.get("error") or not r.get("check", {}).get("all_ok"):
                    keep_failed(work / "run.db", tag)  # evidence, not deleted
                remove_db(work / "run.db")
                save()
                mig = r.get("migration", {})
                w = r["writer"]
                nan = float("nan")
                ok = r.get("check", {}).get("all_ok")
                print(
                    f"[{rows:,}] rep {rep} {mode:8s} lock {mig.get('lock_seconds', nan):7.3f} s "
                    f"cutover {mig.get('rebuild', {}).get('cutover_seconds', nan):7.3f} s "
                    f"apply {r['apply_wall_seconds']:7.1f} s | writer {w['commits_per_s']:.0f}/s "
                    f"p99 {w['p99_ms']:.1f} ms max {w['max_ms']:.0f} ms "
                    f"| wal peak {r['sizes']['peak_wal'] / 1e6:,.0f} MB "
                    f"| checks {'ok' if ok else 'FAILED ' + str(r.get('error') or r.get('check'))}",
                    flush=True,
                )
    results["uptime_after"] = uptime()
    results["wall_seconds"] = time.perf_counter() - wall0
    report(results, out, args.plot)
    print(f"total {results['wall_seconds']:.0f} s; {results_path}", flush=True)


if __name__ == "__main__":
    main()
