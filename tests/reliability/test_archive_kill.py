"""SIGKILL a real archive run at every point it passes, then prove no row was lost.

Per point: a 6K-row demo database, a separate process archiving the worklogs older than a cutoff in
batches of 200 with LITESHIFT_KILL_AT set to the point. After the kill: both files pass
integrity_check, every original row is in the live file or the archive, and a row in both is the
same in both (only the batch between its copy and its delete may be). After the rerun: every row
is in exactly one file, unchanged, the archive verified, no bookkeeping left, and the live file got
no table. With a writer (inserts and updates, aimed partly at the pending batch) the rerun must
also keep every committed write with its last value.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_archive import Writer, assert_writes_kept

from liteshift.archive.move import PROGRESS, archive_rows
from liteshift.core.faults import POINTS as ALL_POINTS
from liteshift.demo import build_demo_db

ROWS = 6000
CUTOFF = "2024-07-01"  # a quarter of the rows: about 1,500, in 8 batches of 200
BATCH = 200
RUN = (
    "import sys; from pathlib import Path; from liteshift.archive.move import archive_rows; "
    "archive_rows(Path(sys.argv[1]), Path(sys.argv[2]), 'worklogs', 'started', sys.argv[3], "
    "batch_rows=int(sys.argv[4]))"
)
# What the killed run left: rows moved (deleted from the live file) and rows in both files.
AFTER_KILL = {
    "archive-prepared": (0, 0),
    "archive-copied": (0, BATCH),
    "archive-deleted": (BATCH, 0),
    "archive-cleaned": (BATCH, 0),
    "archive-verified": (None, 0),  # all of them
}


@pytest.fixture(scope="session")
def archive_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_db(tmp_path_factory.mktemp("archive-kill") / "template.db", ROWS)


def _copy(template: Path, target: Path) -> Path:
    src, dst = sqlite3.connect(template), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return target


def _rows(path: Path) -> dict[int, tuple[Any, ...]]:
    if not path.exists():
        return {}
    con = sqlite3.connect(path)
    try:
        if con.execute("SELECT 1 FROM sqlite_schema WHERE name = 'worklogs'").fetchone() is None:
            return {}
        return {r[0]: r for r in con.execute("SELECT * FROM worklogs")}
    finally:
        con.close()


def _one(path: Path, sql: str) -> Any:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def _pending(arc: Path) -> int:
    con = sqlite3.connect(arc)
    try:
        names = [
            r[0] for r in con.execute("SELECT name FROM sqlite_schema WHERE name LIKE 'liteshift_archive_p%'")
        ]
        return sum(con.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for n in names)
    finally:
        con.close()


def _kill_run(db: Path, arc: Path, point: str) -> None:
    env = {**os.environ, "LITESHIFT_KILL_AT": point}
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(db), str(arc), CUTOFF, str(BATCH)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, f"{point} was never reached: {done.stderr[-2000:]}"


def _schema(path: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("point", [p for p in ALL_POINTS if p.startswith("archive-")])
def test_archive_kill_point(point, tmp_path, archive_template):
    db, arc = _copy(archive_template, tmp_path / "w.db"), tmp_path / "a.db"
    original, schema = _rows(db), _schema(db)
    old = {k for k, r in original.items() if r[6] < CUTOFF}

    _kill_run(db, arc, point)

    assert _one(db, "PRAGMA integrity_check") == "ok" == _one(arc, "PRAGMA integrity_check")
    live, archived = _rows(db), _rows(arc)
    assert {**live, **archived} == original, "a row is lost or changed"
    assert all(archived[k] == live[k] for k in live.keys() & archived.keys())
    moved, both = AFTER_KILL[point]
    killed_moved = len(original) - len(live)
    assert killed_moved == (len(old) if moved is None else moved)
    assert len(live.keys() & archived.keys()) == both
    assert _schema(db) == schema

    result = archive_rows(db, arc, "worklogs", "started", CUTOFF, batch_rows=BATCH)

    live, archived = _rows(db), _rows(arc)
    assert live.keys() & archived.keys() == set()
    assert {**live, **archived} == original
    assert set(archived) == old
    assert result.verified and result.remaining == 0 and result.kept_changed == 0
    assert result.deleted == len(old) - killed_moved
    assert _one(arc, f"SELECT count(*) FROM {PROGRESS}") == 0 and _pending(arc) == 0
    assert _schema(db) == schema
    assert _one(db, "PRAGMA integrity_check") == "ok" == _one(arc, "PRAGMA integrity_check")


@pytest.mark.parametrize("point", ["archive-copied", "archive-deleted"])
def test_archive_kill_point_with_a_writer(point, tmp_path, archive_template):
    db, arc = _copy(archive_template, tmp_path / "w.db"), tmp_path / "a.db"
    original = _rows(db)
    # Deletes stay out: a row the application deletes while a killed run's batch is pending is
    # kept in the archive (liteshift cannot tell that delete from its own); nothing is lost.
    writer = Writer(db, arc, tmp_path / "writer", seed=11, cutoff=CUTOFF, deletes=False)
    try:
        writer.wait_commits(20)
        _kill_run(db, arc, point)
        writer.wait_commits(150)  # the application writes on beside the pending batch
        started = time.monotonic()
        result = archive_rows(db, arc, "worklogs", "started", CUTOFF, batch_rows=BATCH)
        assert time.monotonic() - started < 60
        writer.wait_commits(20)
    finally:
        summary = writer.stop()
    assert summary is not None and summary["errors"] == 0
    assert result.verified
    if point == "archive-copied":  # the writer changed rows of the pending batch before the rerun
        assert result.kept_changed > 0
    assert_writes_kept(db, arc, original, writer.ops())
    assert _one(arc, f"SELECT count(*) FROM {PROGRESS}") == 0 and _pending(arc) == 0
    assert _one(db, "PRAGMA integrity_check") == "ok" == _one(arc, "PRAGMA integrity_check")
