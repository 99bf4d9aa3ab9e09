"""What a database has and what it lacks: applied, pending and drifted migrations.

Read without Prefect and without a write lock, so `liteshift status` and a `liteshift run` with
nothing to do answer at once.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liteshift.core import tracking
from liteshift.core.db import CORRUPT_HINT, check_is_sqlite_file, connection, is_locked_error
from liteshift.core.errors import BadInput
from liteshift.core.migrations import load_migrations


@dataclass(frozen=True)
class Status:
    """Applied, pending and drifted migrations of one database."""

    database: str
    applied: list[tracking.TrackingRow]
    pending: list[str]
    drift: list[tracking.Drift]

    def summary(self) -> dict[str, Any]:
        """The JSON object `liteshift status --json` prints."""
        return {
            "database": self.database,
            "applied": [
                {"version": a.version, "name": a.name, "applied_at": a.applied_at, "undo": a.undo_path()}
                for a in self.applied
            ],
            "pending": self.pending,
            "drift": [d.__dict__ for d in self.drift],
        }


def read_status(database: Path, migrations_dir: Path, busy_timeout_ms: int = 5000) -> Status:
    """Compare the migrations directory with the database's tracking table; write nothing."""
    check_is_sqlite_file(database)
    files = load_migrations(migrations_dir)
    try:
        with connection(database, busy_timeout_ms, readonly=True) as con:
            applied = tracking.read_tracking(con)
    except sqlite3.DatabaseError as exc:
        if is_locked_error(exc):
            raise
        raise BadInput(f"Database {database} is corrupt", str(exc), CORRUPT_HINT) from exc
    pending = [m.label for m in tracking.pending(files, applied)]
    return Status(str(database), list(applied.values()), pending, tracking.drifted(files, applied))
