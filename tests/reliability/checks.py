"""What the reliability tests check and share: content snapshots, exact row loss, run output."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import PROJECT_MIGRATIONS

BIN = Path(sys.executable).parent
# Migration 001 alone (the crash and writer matrices are about it; rebuilds have their own).
DEFAULT_MIGRATIONS_DIR = PROJECT_MIGRATIONS
MIG_001 = DEFAULT_MIGRATIONS_DIR / "001_add_composite_indexes.sql"
CREATED_001 = (
    "idx_worklogs_user_range",
    "idx_worklogs_instance_range",
    "idx_billing_rates_lookup",
    "idx_factorial_leaves_company_status",
)
# A declared query no index can serve: the run fails after the commit and rolls back.
UNSERVED_SIDECAR = """[[query]]
name = "comment_lookup"
sql = "SELECT id FROM worklogs WHERE comment = 'no such comment'"
expect_index = "idx_worklogs_user_range"
"""


def snapshot(path: Path) -> dict[str, Any]:
    """The database's content: every schema object, and per table its row count and a row digest."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        schema = con.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name"
        ).fetchall()
        tables = {}
        for (name,) in con.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name"):
            digest = hashlib.sha256()
            rows = 0
            quoted = '"' + name.replace('"', '""') + '"'
            for row in con.execute(f"SELECT * FROM {quoted} ORDER BY 1"):
                digest.update(repr(row).encode())
                rows += 1
            tables[name] = (rows, digest.hexdigest())
        return {"schema": schema, "tables": tables}
    finally:
        con.close()


def user_content(snap: dict[str, Any]) -> dict[str, Any]:
    """A snapshot without liteshift's own tables and SQLite's statistics (they change legitimately)."""
    skip = ("liteshift_", "sqlite_stat")
    return {
        "schema": [s for s in snap["schema"] if not s[1].startswith(skip) and not s[2].startswith(skip)],
        "tables": {k: v for k, v in snap["tables"].items() if not k.startswith(skip)},
    }


def rows_lost(original: Path, path: Path) -> int:
    """Rows of the original's user tables that are not in the database at path (exact, by value)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        con.execute("ATTACH ? AS orig", (f"file:{original}?mode=ro",))
        tables = [
            r[0]
            for r in con.execute("SELECT name FROM orig.sqlite_schema WHERE type = 'table'")
            if not r[0].startswith(("sqlite_", "liteshift_"))
        ]
        return sum(
            con.execute(
                f'SELECT count(*) FROM (SELECT * FROM orig."{t}" EXCEPT SELECT * FROM main."{t}")'
            ).fetchone()[0]
            for t in tables
        )
    finally:
        con.close()


def integrity(path: Path) -> list[str]:
    """PRAGMA integrity_check rows; ['ok'] when the file is sound."""
    con = sqlite3.connect(str(path))
    try:
        return [r[0] for r in con.execute("PRAGMA integrity_check")]
    finally:
        con.close()


def applied_versions(path: Path) -> list[str]:
    con = sqlite3.connect(str(path))
    try:
        if not con.execute("SELECT 1 FROM sqlite_schema WHERE name = 'liteshift_migrations'").fetchone():
            return []
        return [r[0] for r in con.execute("SELECT version FROM liteshift_migrations ORDER BY version")]
    finally:
        con.close()


def index_names(path: Path) -> set[str]:
    con = sqlite3.connect(str(path))
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")}
    finally:
        con.close()


def lock_row(path: Path) -> tuple[Any, ...] | None:
    con = sqlite3.connect(str(path))
    try:
        if not con.execute("SELECT 1 FROM sqlite_schema WHERE name = 'liteshift_lock'").fetchone():
            return None
        return con.execute("SELECT token, host, pid FROM liteshift_lock").fetchone()
    finally:
        con.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def json_summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON object `liteshift run --json` printed (its last stdout line)."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON on stdout; stderr: {proc.stderr[-2000:]}"
    return dict(json.loads(lines[-1]))
