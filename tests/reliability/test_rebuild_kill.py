"""SIGKILL a real online table rebuild at every point it passes, while an application writes.

Per point: a 20K-row demo database, a migration that rebuilds worklogs with a CHECK constraint
(and creates an index before the rebuild, which is built on the rebuild's shadow), and a separate writer
process committing single-row inserts, updates and deletes from before the killed run until after
the rerun. After the kill: integrity_check is ok, worklogs is either fully old or fully new and
the application still writes. After the rerun: migration 001 is applied once, worklogs has the
target definition and its indexes, liteshift leaves nothing behind, and every write the writer
committed is there exactly as it committed it. FAST points run under plain `pytest`; the rest
with `pytest -m slow`.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest
from checks import applied_versions, integrity, json_summary
from helpers import WriterProcess

from liteshift.core.faults import POINTS
from liteshift.demo import build_demo_db

ROWS = 20_000  # the copy's throttle starts at 2,000 rows a batch: several batches
FAST = {"rebuild-copy-batch", "rebuild-cutover-swapped", "migrate-after-commit"}
MIGRATE_POINTS = {
    "migrate-locked",
    "migrate-between-statements",
    "migrate-before-commit",
    "migrate-after-commit",
}
REBUILD_POINTS = [p for p in POINTS if p.startswith("rebuild-") or p in MIGRATE_POINTS]
# Where each point lies relative to the migration's COMMIT: what the database must hold after it.
BEFORE_COMMIT = {
    "rebuild-preparing",
    "rebuild-prepared",
    "rebuild-copy-batch",
    "rebuild-reconcile",
    "rebuild-verify-range",
    "migrate-locked",
    "migrate-between-statements",
    "rebuild-cutover-drained",
    "rebuild-cutover-swapped",
    "migrate-before-commit",
}
AFTER_COMMIT = {"migrate-after-commit", "rebuild-dropping-old", "rebuild-old-dropped"}
COPY_FROM_START = {"rebuild-preparing", "rebuild-prepared"}  # the killed run copied no row

NEW_INDEX = "idx_worklogs_started"
# The demo's worklogs, column for column (tests check it against a demo database), plus the CHECK.
TARGET_SQL = """CREATE TABLE "worklogs" (
   "id" INTEGER PRIMARY KEY,
   "company_id" INTEGER NOT NULL REFERENCES "companies"("id"),
   "team_id" INTEGER REFERENCES "teams"("id"),
   "jira_instance" TEXT NOT NULL,
   "author_email" TEXT NOT NULL,
   "issue_key" TEXT NOT NULL,
   "started" TEXT NOT NULL,
   "time_spent_seconds" INTEGER NOT NULL,
   "comment" TEXT,
   CONSTRAINT positive_time CHECK (time_spent_seconds > 0)
)"""
MIGRATION = f"""-- Worklogs get a positive duration, through an online rebuild.

-- migrate:up
CREATE INDEX IF NOT EXISTS {NEW_INDEX} ON worklogs(started);
-- Run as written (the index above is built on the rebuild's shadow): migrate-between-statements.
ANALYZE worklogs;

-- migrate:rebuild worklogs
{TARGET_SQL};
"""
LEFTOVER_PREFIXES = (
    "liteshift_new_",
    "liteshift_changes_",
    "liteshift_capture_",
    "liteshift_old_",
    "liteshift_ix_",
)
INSERT = (
    "INSERT INTO worklogs (company_id, team_id, jira_instance, author_email, issue_key, started, "
    "time_spent_seconds, comment) VALUES (?, ?, 'Company Main', ?, 'PRJ-7', ?, ?, ?)"
)

# The application: one statement per commit (autocommit), foreign keys on, busy_timeout 10 s.
# argv: DB LOG ERRORS STOP READY DONE SEED. LOG gets "I|U|D id value" after each commit; ERRORS
# every failure but 'database is locked' (retried); DONE a JSON summary when STOP appears.
WRITER = r"""
import json, os, random, sqlite3, sys, time

log_path, err_path, stop_path, ready_path, done_path, db, seed = sys.argv[1:8]
INSERT = sys.stdin.read()
PACE_S = 0.004  # at most ~250 commits/s
rng = random.Random(int(seed))
con = sqlite3.connect(db, isolation_level=None, timeout=10.0)
con.execute("PRAGMA busy_timeout = 10000")
con.execute("PRAGMA foreign_keys = ON")
con.execute("PRAGMA synchronous = NORMAL")
teams = con.execute("SELECT id, company_id FROM teams ORDER BY id").fetchall()
live = [r[0] for r in con.execute("SELECT id FROM worklogs ORDER BY id")]
log = open(log_path, "a", encoding="utf-8")
errors = open(err_path, "a", encoding="utf-8")
commits = locked = failed = 0
start = time.perf_counter()


def error(text):
    global failed
    failed += 1
    errors.write(text.replace("\n", " ") + "\n")
    errors.flush()


while not os.path.exists(stop_path):
    began = time.perf_counter()
    roll = rng.random()
    value = rng.randint(1, 28_800)
    try:
        if roll < 0.4 or len(live) < 1000:
            team, company = rng.choice(teams)
            who = f"writer{rng.randint(1, 50)}@example.com"
            when = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} 10:00:00"
            rowid = con.execute(INSERT, (company, team, who, when, value, "writer")).lastrowid
            live.append(rowid)
            line = f"I {rowid} {value}"
        elif roll < 0.8:
            rowid = live[rng.randrange(len(live))]
            sql = "UPDATE worklogs SET time_spent_seconds = ? WHERE id = ?"
            changed = con.execute(sql, (value, rowid)).rowcount
            if changed != 1:
                error(f"update of id {rowid} changed {changed} rows")
                continue
            line = f"U {rowid} {value}"
        else:
            i = rng.randrange(len(live))
            rowid = live[i]
            changed = con.execute("DELETE FROM worklogs WHERE id = ?", (rowid,)).rowcount
            if changed != 1:
                error(f"delete of id {rowid} removed {changed} rows")
                continue
            live[i] = live[-1]
            live.pop()
            line = f"D {rowid} 0"
    except sqlite3.Error as exc:
        if "database is locked" in str(exc):
            locked += 1
        else:
            error(f"{type(exc).__name__}: {exc}")
        continue
    log.write(line + "\n")
    log.flush()
    commits += 1
    if commits == 1:
        open(ready_path, "w").close()
    time.sleep(max(0.0, PACE_S - (time.perf_counter() - began)))

seconds = time.perf_counter() - start
con.close()
with open(done_path, "w", encoding="utf-8") as fh:
    json.dump({"commits": commits, "locked": locked, "errors": failed, "seconds": seconds}, fh)
"""


class Writer(WriterProcess):
    """The writer process, started before the killed run and stopped (by its stop file, else its
    PID) after the rerun."""

    def __init__(self, db: Path, work: Path, seed: int) -> None:
        super().__init__(WRITER, work, [db, seed], stdin=INSERT)

    def ops(self) -> list[tuple[str, int, int]]:
        """Every committed operation, in commit order."""
        return [(op, int(rowid), int(value)) for op, rowid, value in (line.split() for line in self.lines())]


@pytest.fixture(scope="session")
def rebuild_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo database per session; each test copies it with the backup API."""
    path = build_demo_db(tmp_path_factory.mktemp("rebuild-kill") / "template.db", ROWS)
    con = sqlite3.connect(path)
    mem = sqlite3.connect(":memory:")
    try:
        mem.execute(TARGET_SQL)
        columns = "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('worklogs')"
        assert con.execute(columns).fetchall() == mem.execute(columns).fetchall(), (
            "TARGET_SQL no longer has the demo's worklogs columns"
        )
    finally:
        con.close()
        mem.close()
    return path


def _copy(template: Path, path: Path) -> Path:
    src, dst = sqlite3.connect(template), sqlite3.connect(path)
    try:
        src.backup(dst)
        assert dst.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    finally:
        src.close()
        dst.close()
    return path


def _worklogs_schema(db: Path) -> tuple[str, frozenset[str], int]:
    """(worklogs' definition, its index names, tracking rows of 001), read in one snapshot."""
    con = sqlite3.connect(db, timeout=10.0)
    try:
        con.execute("BEGIN")
        sql = con.execute(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'worklogs'"
        ).fetchone()[0]
        indexes = frozenset(
            r[0]
            for r in con.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'worklogs'"
            )
        )
        tracked = 0
        if con.execute("SELECT 1 FROM sqlite_schema WHERE name = 'liteshift_migrations'").fetchone():
            tracked = con.execute(
                "SELECT count(*) FROM liteshift_migrations WHERE version = '001'"
            ).fetchone()[0]
        con.execute("COMMIT")
        return sql, indexes, tracked
    finally:
        con.close()


def _state(db: Path, original_sql: str, original_indexes: frozenset[str]) -> str:
    """'old' or 'new'; anything else names what is half done."""
    sql, indexes, tracked = _worklogs_schema(db)
    if sql == original_sql and indexes == original_indexes and tracked == 0:
        return "old"
    if sql == TARGET_SQL and indexes == original_indexes | {NEW_INDEX} and tracked == 1:
        return "new"
    return (
        f"IN BETWEEN: target definition {sql == TARGET_SQL}, old definition {sql == original_sql}, "
        f"indexes {sorted(indexes)}, tracking rows of 001: {tracked}"
    )


def _insert_one(db: Path, value: int) -> int:
    """A fresh committed insert by another connection of the application; its id."""
    con = sqlite3.connect(db, isolation_level=None, timeout=10.0)
    try:
        con.execute("PRAGMA busy_timeout = 10000")
        con.execute("PRAGMA foreign_keys = ON")
        team, company = con.execute("SELECT id, company_id FROM teams ORDER BY id DESC LIMIT 1").fetchone()
        params = (company, team, "probe@example.com", "2025-07-01 09:00:00", value, "probe")
        return int(con.execute(INSERT, params).lastrowid or 0)
    finally:
        con.close()


def _expected(
    initial: set[int], ops: list[tuple[str, int, int]], probes: dict[int, int]
) -> tuple[set[int], dict[int, int]]:
    """(ids worklogs must hold, time_spent_seconds each written row must have) from the writes."""
    ids, values = set(initial), {}
    for op, rowid, value in ops:
        if op == "I":
            assert rowid not in ids, f"the writer's insert of id {rowid} found it already there"
            ids.add(rowid)
            values[rowid] = value
        elif op == "U":
            assert rowid in ids, f"the writer updated id {rowid}, not a live row"
            values[rowid] = value
        else:
            ids.remove(rowid)
            values.pop(rowid, None)
    for rowid, value in probes.items():
        ids.add(rowid)
        values[rowid] = value
    return ids, values


def check_every_write(
    db: Path,
    initial: set[int],
    ops: list[tuple[str, int, int]],
    probes: dict[int, int],
    template_rows: dict[int, tuple[object, ...]],
) -> None:
    """Every write the application committed is there exactly as committed, nothing else moved."""
    ids, values = _expected(initial, ops, probes)
    rows = _rows(db)
    assert set(rows) - ids == set(), "rows the application never committed (or deleted) are present"
    assert ids - set(rows) == set(), "committed rows are missing"
    wrong = {i: (rows[i][7], v) for i, v in values.items() if rows[i][7] != v}
    assert wrong == {}, "time_spent_seconds differs from the last committed value (found, committed)"
    untouched = initial - {rowid for _, rowid, _ in ops}
    changed = [i for i in untouched if rows[i] != template_rows[i]]
    assert changed == [], "rows the application never touched changed"


def _rows(db: Path) -> dict[int, tuple[object, ...]]:
    con = sqlite3.connect(db)
    try:
        return {r[0]: r for r in con.execute("SELECT * FROM worklogs")}
    finally:
        con.close()


def _leftovers(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        found = [
            f"{kind} {name}"
            for kind, name in con.execute("SELECT type, name FROM sqlite_schema")
            if name.startswith(LEFTOVER_PREFIXES)
        ]
        if con.execute("SELECT 1 FROM sqlite_schema WHERE name = 'liteshift_rebuilds'").fetchone():
            found += [
                f"liteshift_rebuilds row {r}" for r in con.execute("SELECT id, phase FROM liteshift_rebuilds")
            ]
        return found
    finally:
        con.close()


def _check_rejects_zero(db: Path) -> str:
    con = sqlite3.connect(db, isolation_level=None, timeout=10.0)
    try:
        with pytest.raises(sqlite3.IntegrityError) as err:
            con.execute(INSERT, (1, 1, "zero@example.com", "2025-07-01 09:00:00", 0, "zero"))
        return str(err.value)
    finally:
        con.close()


def _foreign_key_violations(db: Path) -> list[tuple[object, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA foreign_key_check").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize(
    "point", [pytest.param(p, marks=() if p in FAST else (pytest.mark.slow,)) for p in REBUILD_POINTS]
)
def test_rebuild_kill_point(point, tmp_path, rebuild_template, run_cli, record):
    started = time.monotonic()
    db = _copy(rebuild_template, tmp_path / "w.db")
    original_sql, original_indexes, _ = _worklogs_schema(db)
    initial = set(_rows(db))
    template_rows = _rows(rebuild_template)
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "001_positive_time.sql").write_text(MIGRATION, "utf-8")
    (tmp_path / "backups").mkdir()
    args = [
        "run",
        "--database",
        db,
        "--migrations",
        migrations,
        "--rebuild-mode",
        "online",
        "--revert-window",  # the old copy dropped at once, as this matrix checks (test_revert_kill keeps it)
        "0",
        "--backup-dir",
        tmp_path / "backups",
        "--report-dir",
        tmp_path / "reports",
        "--json",
    ]
    probes: dict[int, int] = {}
    writer = Writer(db, tmp_path / "writer", seed=POINTS.index(point))
    try:
        writer.wait_commits(20)

        killed = run_cli(*args, kill_at=point)
        assert killed.returncode == -signal.SIGKILL, (
            f"{point} was never reached (rc {killed.returncode}): {killed.stderr[-2000:]}"
        )

        # The application keeps writing beside what the dead run left.
        writer.wait_commits(50)
        assert writer.error_lines() == [], "the application's writes failed after the kill"
        assert integrity(db) == ["ok"]
        after_kill = _state(db, original_sql, original_indexes)
        assert after_kill in ("old", "new"), after_kill
        if point in BEFORE_COMMIT:
            assert after_kill == "old"
        if point in AFTER_COMMIT:
            assert after_kill == "new"
        probes[_insert_one(db, 4242)] = 4242

        rerun = run_cli(*args)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        rebuilt = json_summary(rerun).get("rebuilds") or []  # none when only leftovers were finished
        writer.wait_commits(30)  # the application writes to the new table as well
        assert writer.error_lines() == [], "the application's writes failed during the rerun"
    finally:
        summary = writer.stop()

    assert summary is not None, f"the writer did not stop cleanly: {writer.error_lines()}"
    assert summary["errors"] == 0, writer.error_lines()
    if point in COPY_FROM_START:  # the rerun copies all 20K rows itself: in several batches
        assert [r["batches"] > 1 for r in rebuilt] == [True], rebuilt
    assert applied_versions(db) == ["001"]
    assert _state(db, original_sql, original_indexes) == "new"
    assert "positive_time" in _check_rejects_zero(db)
    assert _leftovers(db) == []
    assert _foreign_key_violations(db) == []
    assert integrity(db) == ["ok"]

    ops = writer.ops()
    check_every_write(db, initial, ops, probes, template_rows)

    record(
        kind="rebuild-kill",
        point=point,
        after_kill=after_kill,
        writer_commits=summary["commits"],
        writer_rate=round(summary["commits"] / summary["seconds"]),
        writer_locked=summary["locked"],
        inserts=sum(op == "I" for op, _, _ in ops),
        updates=sum(op == "U" for op, _, _ in ops),
        deletes=sum(op == "D" for op, _, _ in ops),
        rerun_rebuilds=rebuilt,
        seconds=round(time.monotonic() - started, 1),
    )
