"""SIGKILL a real online index build at every point it passes, while an application writes.

Per point: a 20K-row demo database, a migration of two CREATE INDEX statements on worklogs (a
plain composite one, and a UNIQUE partial one) run with `--index-mode online`: worklogs is copied
into a shadow that has both indexes, and the first statement becomes the cut-over. A separate
writer process (test_rebuild_kill's) commits single-row inserts, updates and deletes from before
the killed run until after the rerun. After the kill: integrity_check is ok, the database is
either fully old (neither index, 001 not tracked) or fully new (both indexes as declared, 001
tracked) and the application still writes. After the rerun: 001 is applied once, both indexes
are as declared, liteshift leaves nothing behind, and every write the writer committed is there
exactly as it committed it. FAST points run under plain `pytest`; the rest with `pytest -m slow`.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest
from checks import applied_versions, integrity, json_summary
from test_rebuild_kill import (
    MIGRATE_POINTS,
    Writer,
    _copy,
    _foreign_key_violations,
    _insert_one,
    _leftovers,
    _rows,
    _worklogs_schema,
    check_every_write,
)
from test_rebuild_kill import rebuild_template as demo_template  # noqa: F401  (the fixture)

from liteshift.core.faults import POINTS
from liteshift.core.lock import LOCK_TABLE
from liteshift.core.tracking import META_TABLE, TRACKING_TABLE
from liteshift.migrate import ledger
from liteshift.rebuild.schema import STATE_TABLE

# Killed inside the migration's transaction after the swap (~11 s): `make test` runs this one;
# the rest (the drop of the old copy included) run in `make reliability`. A fresh clone's
# `make test` took 600 s of its 10-minute budget with two fast points here.
FAST = {"rebuild-cutover-swapped"}
# Both statements are the index build's: the first is its cut-over, the second is skipped (its
# index exists from the cut-over on). No statement runs as written, so none is followed by
# migrate-between-statements.
NOT_PASSED = {"migrate-between-statements"}
INDEX_POINTS = [
    p for p in POINTS if (p.startswith("rebuild-") or p in MIGRATE_POINTS) and p not in NOT_PASSED
]
# Where each point lies relative to the migration's COMMIT: what the database must hold after it.
AFTER_COMMIT = {"migrate-after-commit", "rebuild-dropping-old", "rebuild-old-dropped"}
COPY_FROM_START = {"rebuild-preparing", "rebuild-prepared"}  # the killed run copied no row
# The killed run had copied every row: the rerun resumes at the reconcile and copies none.
COPIED = {p for p in INDEX_POINTS if p not in AFTER_COMMIT} - COPY_FROM_START - {"rebuild-copy-batch"}

# A plain composite index, and a UNIQUE partial one: the writer's updates of time_spent_seconds
# move rows in and out of it, through the capture triggers while the copy runs.
INDEXES = {
    "idx_worklogs_author_started": (
        "CREATE INDEX idx_worklogs_author_started ON worklogs(author_email, started DESC)"
    ),
    "idx_worklogs_long_company": (
        "CREATE UNIQUE INDEX idx_worklogs_long_company ON worklogs(id, company_id) "
        "WHERE time_spent_seconds > 3600"
    ),
}
MIGRATION = "-- Two indexes on worklogs, built online.\n\n-- migrate:up\n" + "".join(
    f"{sql};\n" for sql in INDEXES.values()
)
# What liteshift keeps in a database for good (the state table's rows are _leftovers' business).
PERMANENT = {TRACKING_TABLE, META_TABLE, LOCK_TABLE, STATE_TABLE, ledger.LEDGER_TABLE}


def _definitions(con: sqlite3.Connection) -> dict[str, object]:
    """Each new index's sqlite_schema row (table, sql) and PRAGMA index_xinfo; None when absent."""
    found: dict[str, object] = {}
    for name in INDEXES:
        row = con.execute(
            "SELECT tbl_name, sql FROM sqlite_schema WHERE type = 'index' AND name = ?", (name,)
        ).fetchone()
        xinfo = con.execute(f"PRAGMA index_xinfo({name})").fetchall()
        found[name] = None if row is None else (*row, tuple(xinfo))
    return found


def _declared(template: Path) -> dict[str, object]:
    """The definitions the statements give when SQLite runs them as written (on an empty worklogs)."""
    con = sqlite3.connect(template)
    mem = sqlite3.connect(":memory:")
    try:
        mem.execute(con.execute("SELECT sql FROM sqlite_schema WHERE name = 'worklogs'").fetchone()[0])
        for sql in INDEXES.values():
            mem.execute(sql)
        return _definitions(mem)
    finally:
        con.close()
        mem.close()


def _state(db: Path, before: tuple[str, frozenset[str]], declared: dict[str, object]) -> str:
    """'old' or 'new'; anything else names what is half done. Read when no liteshift runs (the
    schema holds still; the writer only writes rows)."""
    sql, indexes, tracked = _worklogs_schema(db)
    con = sqlite3.connect(db, timeout=10.0)
    try:
        found = _definitions(con)
    finally:
        con.close()
    table_kept = (sql, indexes - set(INDEXES)) == before
    # Neither name on any table: not on worklogs, not on a shadow half swapped.
    if table_kept and tracked == 0 and indexes == before[1] and set(found.values()) == {None}:
        return "old"
    if table_kept and tracked == 1 and indexes == before[1] | set(INDEXES) and found == declared:
        return "new"
    return (
        f"IN BETWEEN: worklogs' definition kept {sql == before[0]}, indexes {sorted(indexes)}, "
        f"new index definitions {found}, tracking rows of 001: {tracked}"
    )


def _liteshift_objects(db: Path) -> list[str]:
    """test_rebuild_kill's leftovers, and any other liteshift_ object a clean run does not keep."""
    con = sqlite3.connect(db)
    try:
        extra = [
            f"{kind} {name}"
            for kind, name in con.execute("SELECT type, name FROM sqlite_schema")
            if name.startswith("liteshift_") and name not in PERMANENT and not name.startswith(ledger.PREFIX)
        ]
    finally:
        con.close()
    return sorted(set(_leftovers(db)) | set(extra))


@pytest.mark.parametrize(
    "point", [pytest.param(p, marks=() if p in FAST else (pytest.mark.slow,)) for p in INDEX_POINTS]
)
def test_index_kill_point(point, tmp_path, demo_template, run_cli, record):  # noqa: F811
    assert set(INDEX_POINTS) >= FAST | AFTER_COMMIT | COPY_FROM_START  # no typo in a point's name
    assert set(POINTS) >= NOT_PASSED
    started = time.monotonic()
    db = _copy(demo_template, tmp_path / "w.db")
    declared = _declared(demo_template)
    original_sql, original_indexes, _ = _worklogs_schema(db)
    before = (original_sql, original_indexes)
    assert original_indexes.isdisjoint(INDEXES)
    initial = set(_rows(db))
    template_rows = _rows(demo_template)
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "001_worklog_indexes.sql").write_text(MIGRATION, "utf-8")
    (tmp_path / "backups").mkdir()
    args = [
        "run",
        "--database",
        db,
        "--migrations",
        migrations,
        "--index-mode",
        "online",
        "--revert-window",
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
        after_kill = _state(db, before, declared)
        assert after_kill == ("new" if point in AFTER_COMMIT else "old"), after_kill
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
    if point in AFTER_COMMIT:
        assert rebuilt == [], rebuilt
    else:  # the rerun builds both indexes on one shadow, none inside the lock
        built = [(r["table"], r["index_build"], r["prebuilt_indexes"], r["built_in_lock"]) for r in rebuilt]
        assert built == [("worklogs", True, 2, 0)], rebuilt
    if point in COPY_FROM_START:  # the rerun copies all 20K rows itself: in several batches
        assert [r["batches"] > 1 for r in rebuilt] == [True], rebuilt
    if point in COPIED:  # the shadow survived the kill (a rollback inside the lock keeps it)
        assert [r["rows"] for r in rebuilt] == [0], rebuilt
    assert applied_versions(db) == ["001"]
    assert _state(db, before, declared) == "new"
    assert _liteshift_objects(db) == []
    assert _foreign_key_violations(db) == []
    assert integrity(db) == ["ok"]

    ops = writer.ops()
    check_every_write(db, initial, ops, probes, template_rows)

    record(
        kind="index-kill",
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
