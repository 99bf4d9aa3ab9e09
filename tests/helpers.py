"""Helpers the tests share: content snapshots and small migration directories."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import tempfile
from pathlib import Path

ALL_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _only_001() -> Path:
    """The project's migration 001 alone: the suites about the pipeline's mechanics are written
    around it; migration 002 (rebuilds) has tests of its own (test_rebuild.py, e2e)."""
    target = Path(tempfile.mkdtemp(prefix="liteshift-test-migrations-001-"))
    for f in ALL_MIGRATIONS.glob("001_*"):
        shutil.copy(f, target / f.name)
    return target


PROJECT_MIGRATIONS = _only_001()


def snapshot(path: Path) -> dict[str, str]:
    """Schema and per-table content digests of a database, ignoring SQLite's own statistics."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = {}
        for kind, name, sql in con.execute(
            "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_stat%' ORDER BY name"
        ):
            result[f"schema:{kind}:{name}"] = sql or ""
            if kind == "table":
                digest = hashlib.sha256()
                for row in con.execute(f'SELECT * FROM "{name}" ORDER BY rowid'):
                    digest.update(repr(row).encode())
                result[f"rows:{name}"] = digest.hexdigest()
        return result
    finally:
        con.close()


def user_snapshot(path: Path) -> dict[str, str]:
    """A snapshot without liteshift's own tables (tracking, lock)."""
    return {k: v for k, v in snapshot(path).items() if "liteshift_" not in k}


def migrations_dir(tmp_path: Path, files: dict[str, str], with_project: bool = False) -> Path:
    """A migrations directory holding the given files (and the project's 001 when asked)."""
    target = tmp_path / "migrations"
    target.mkdir(exist_ok=True)
    if with_project:
        for f in PROJECT_MIGRATIONS.iterdir():  # 001
            shutil.copy(f, target / f.name)
    for name, text in files.items():
        (target / name).write_text(text, "utf-8")
    return target


def index_names(path: Path) -> set[str]:
    """Names of the indexes in a database."""
    con = sqlite3.connect(path)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")}
    finally:
        con.close()


def tracked_versions(path: Path) -> list[str]:
    """Versions in liteshift_migrations ([] when the table does not exist)."""
    con = sqlite3.connect(path)
    try:
        try:
            return [r[0] for r in con.execute("SELECT version FROM liteshift_migrations ORDER BY version")]
        except sqlite3.OperationalError:
            return []
    finally:
        con.close()
