"""SIGKILL a real `liteshift run` at every named point, then prove nothing was lost.

After each kill: integrity_check is ok; the schema is either untouched or fully migrated with its
tracking row; no incomplete backup looks valid; the lock does not block; a rerun converges.
The points listed in FAST also run under plain `pytest`; the rest with `pytest -m slow`.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest
from checks import (
    CREATED_001,
    MIG_001,
    UNSERVED_SIDECAR,
    applied_versions,
    index_names,
    integrity,
    lock_row,
    pid_alive,
    rows_lost,
    snapshot,
    user_content,
)

from liteshift.core.faults import POINTS

ROWS = 20_000
FAST = {"backup-copying", "migrate-between-statements", "migrate-after-commit"}
# Points a run reaches only while rolling back: the killed run uses a migrations directory whose
# declared query no index serves (the run fails after its commit); "restore" fixtures have no down.
ROLLBACK_DOWN = {"rollback-start", "rollback-downs-committed", "rollback-verified"}
ROLLBACK_RESTORE = {"rollback-before-restore", "rollback-restoring"}
# Points of other kinds of run, each killed by its own suite: rebuilds (test_rebuild_kill),
# maintenance (test_maintenance), archiving (test_archive_kill).
OTHER_RUNS = ("rebuild-", "maintenance-", "archive-")
# Without its down section 001 would still be undone by its derived down (it only creates indexes):
# a statement with no inverse, that changes no row, leaves the backup as the only undo.
NO_DOWN_SQL = MIG_001.read_text().split("-- migrate:down")[0] + "UPDATE companies SET name = name WHERE 0;\n"


def _scenarios() -> list[object]:
    cases: list[object] = []
    for point in (p for p in POINTS if not p.startswith(OTHER_RUNS)):
        marks = () if point in FAST else (pytest.mark.slow,)
        cases.append(pytest.param(point, "wal", id=f"{point}-wal", marks=marks))
    # Rollback-journal mode: a crash inside the transaction leaves a hot journal for SQLite to undo.
    for point in ("backup-copying", "migrate-between-statements", "migrate-before-commit"):
        cases.append(pytest.param(point, "delete", id=f"{point}-delete", marks=(pytest.mark.slow,)))
    return cases


def _dirs(tmp_path: Path, point: str) -> tuple[Path, Path]:
    """(migrations for the killed run, migrations for the rerun)."""
    if point in ROLLBACK_DOWN:
        killed = tmp_path / "mig-unserved"
        killed.mkdir()
        shutil.copy(MIG_001, killed / MIG_001.name)
        (killed / "001_add_composite_indexes.toml").write_text(UNSERVED_SIDECAR)
        return killed, MIG_001.parent
    if point in ROLLBACK_RESTORE:
        killed, rerun = tmp_path / "mig-nodown-unserved", tmp_path / "mig-nodown"
        for d in (killed, rerun):
            d.mkdir()
            (d / MIG_001.name).write_text(NO_DOWN_SQL)
        (killed / "001_add_composite_indexes.toml").write_text(UNSERVED_SIDECAR)
        return killed, rerun
    return MIG_001.parent, MIG_001.parent


def _state(db: Path, original: dict[str, object]) -> str:
    """'untouched' or 'migrated'; anything else fails the test."""
    now = user_content(snapshot(db))
    known = {s[1] for s in original["schema"] if s[0] == "index"}  # type: ignore[index]
    extra = {n for n in index_names(db) - known if "liteshift_" not in n}
    versions = applied_versions(db)
    if now == original and not versions:
        return "untouched"
    same_rows = now["tables"] == original["tables"]  # type: ignore[index]
    if same_rows and versions == ["001"] and extra == set(CREATED_001):
        return "migrated"
    return f"INCONSISTENT: versions {versions}, new indexes {sorted(extra)}, rows same {same_rows}"


def _backups(directory: Path, db: Path) -> tuple[list[Path], list[Path]]:
    """(files named as finished backups, .partial files) of db in directory."""
    names = [p for p in directory.glob(f"{db.name}.backup-*") if not p.name.endswith(("-wal", "-shm"))]
    return (
        [p for p in names if not p.name.endswith(".partial")],
        [p for p in names if p.name.endswith(".partial")],
    )


@pytest.mark.parametrize(("point", "mode"), _scenarios())
def test_kill_point(point, mode, tmp_path, new_db, run_cli, record):
    db = new_db(ROWS, wal=(mode == "wal"))
    pristine = tmp_path / "pristine.db"
    shutil.copyfile(db, pristine)
    original = user_content(snapshot(db))
    killed_dir, rerun_dir = _dirs(tmp_path, point)
    args = ["run", "--database", db, "--report-dir", tmp_path / "reports", "--json"]
    started = time.monotonic()

    killed = run_cli(*args, "--migrations", killed_dir, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, f"{point} was never reached: {killed.stderr[-1500:]}"
    assert integrity(db) == ["ok"]
    after_kill = _state(db, original)
    assert after_kill in ("untouched", "migrated"), after_kill
    if point in {"validate-start", "validate-end", "lock-acquired", "backup-renamed", "migrate-locked"}:
        assert after_kill == "untouched"
    if point in {"migrate-after-commit", "verify-indexes-done", "integrity-done", "rollback-start"}:
        assert after_kill == "migrated"
    finished, partials = _backups(tmp_path, db)
    for backup in finished:  # a file named as a backup is complete and holds every row
        assert integrity(backup) == ["ok"]
        assert rows_lost(pristine, backup) == 0
    holder = lock_row(db)
    assert holder is None or not pid_alive(holder[2]), "a dead run's lock must be recoverable"
    lost_after_kill = rows_lost(pristine, db)
    assert lost_after_kill == 0

    rerun = run_cli(*args, "--migrations", rerun_dir)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert integrity(db) == ["ok"]
    assert _state(db, original) == "migrated"
    assert rows_lost(pristine, db) == 0
    assert lock_row(db) is None
    assert _backups(tmp_path, db)[1] == [], "the rerun removes the dead run's .partial files"
    record(
        kind="kill",
        point=point,
        mode=mode,
        after_kill=after_kill,
        partial_left_by_kill=len(partials),
        finished_backups=len(finished),
        rerun="migrated",
        rows_lost=lost_after_kill,
        seconds=round(time.monotonic() - started, 1),
    )
