"""SIGKILL a real `liteshift rollback` of an online rebuild at every point it passes, while an
application writes.

The migration of test_rebuild_kill (an index, then worklogs rebuilt online with a CHECK) is applied
first, not killed, with a revert window (its old copy kept and fed) or without one. Its undo is
derived: the index dropped, worklogs rebuilt back online (from the kept copy, replaying what
changed since; or copied anew outside the write lock), swapped in the downs' transaction. The
rollback is killed at each point. After the kill: integrity_check is ok, worklogs is either fully
new (migrated) or fully old (undone) and the application still writes. A second `liteshift
rollback` converges to the old definition, leaves nothing behind, and every write the
application committed before, during and after is there exactly as committed. FAST points run
under plain `pytest`; the rest with `pytest -m slow`.
"""

from __future__ import annotations

import signal
import time

import pytest
from checks import applied_versions, integrity, json_summary
from test_rebuild_kill import (
    MIGRATION,
    Writer,
    _copy,
    _foreign_key_violations,
    _insert_one,
    _leftovers,
    _rows,
    _state,
    _worklogs_schema,
    check_every_write,
)
from test_rebuild_kill import rebuild_template as demo_template  # noqa: F401  (the fixture)

from liteshift.core.faults import POINTS

# One point in `make test` (it is near its 10-minute budget); all of them in `make reliability`.
FAST = {("rebuild-reconcile", "24")}
# A kept old copy is resumed: the points of a fresh copy are not passed.
FRESH_COPY_ONLY = {"rebuild-preparing", "rebuild-prepared", "rebuild-copy-batch"}
BEFORE_COMMIT = [
    "rebuild-preparing",
    "rebuild-prepared",
    "rebuild-copy-batch",
    "rebuild-reconcile",
    "rollback-start",
    "rebuild-cutover-drained",
    "rebuild-cutover-swapped",
]
AFTER_COMMIT = [
    "rollback-downs-committed",
    "rebuild-dropping-old",
    "rebuild-old-dropped",
    "rollback-verified",
]


@pytest.mark.parametrize(
    ("point", "window"),
    [
        pytest.param(p, w, id=f"{p}-window{w}", marks=() if (p, w) in FAST else (pytest.mark.slow,))
        for w in ("24", "0")
        for p in BEFORE_COMMIT + AFTER_COMMIT
        if not (w != "0" and p in FRESH_COPY_ONLY)
    ],
)
def test_revert_kill_point(point, window, tmp_path, demo_template, run_cli, record):  # noqa: F811
    assert point in POINTS
    started = time.monotonic()
    db = _copy(demo_template, tmp_path / "w.db")
    original_sql, original_indexes, _ = _worklogs_schema(db)
    initial = set(_rows(db))
    template_rows = _rows(demo_template)
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "001_positive_time.sql").write_text(MIGRATION, "utf-8")
    common = ["--database", db, "--migrations", migrations, "--rebuild-mode", "online", "--json"]
    window_args = ["--revert-window", window]
    probes: dict[int, int] = {}
    writer = Writer(db, tmp_path / "writer", seed=POINTS.index(point))
    try:
        writer.wait_commits(20)
        run = run_cli("run", *common, *window_args, "--report-dir", tmp_path / "reports")
        assert run.returncode == 0, run.stderr[-2000:]
        assert _state(db, original_sql, original_indexes) == "new"
        writer.wait_commits(20)

        killed = run_cli("rollback", *common, kill_at=point)
        assert killed.returncode == -signal.SIGKILL, (
            f"{point} was never reached (rc {killed.returncode}): {killed.stderr[-2000:]}"
        )
        writer.wait_commits(50)
        assert writer.error_lines() == [], "the application's writes failed after the kill"
        assert integrity(db) == ["ok"]
        after_kill = _state(db, original_sql, original_indexes)
        assert after_kill == ("new" if point in BEFORE_COMMIT else "old"), after_kill
        probes[_insert_one(db, 4242)] = 4242

        rerun = run_cli("rollback", *common)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        action = json_summary(rerun)["action"]
        assert action == ("derived-down" if point in BEFORE_COMMIT else "nothing"), action
        writer.wait_commits(30)  # the application writes to the table as it was before
        assert writer.error_lines() == [], "the application's writes failed during the rerun"
    finally:
        summary = writer.stop()

    assert summary is not None, f"the writer did not stop cleanly: {writer.error_lines()}"
    assert summary["errors"] == 0, writer.error_lines()
    assert applied_versions(db) == []
    assert _state(db, original_sql, original_indexes) == "old"
    assert _leftovers(db) == []
    assert _foreign_key_violations(db) == []
    assert integrity(db) == ["ok"]

    ops = writer.ops()
    check_every_write(db, initial, ops, probes, template_rows)

    record(
        kind="revert-kill",
        point=point,
        window_h=window,
        after_kill=after_kill,
        writer_commits=summary["commits"],
        writer_rate=round(summary["commits"] / summary["seconds"]),
        rerun=action,
        seconds=round(time.monotonic() - started, 1),
    )
