"""The tracking table: which migrations a database has, with their checksums, and its own version.

liteshift_meta records the layout of liteshift's own tables (`tracking_schema`), so a later
liteshift can upgrade them safely, and an older one refuses a layout it does not know instead of
misreading it. Layout 1 (liteshift 0.1) had no meta table and kept a restore proof as
{"backup_current", "after"}; layout 2 kept it as {"restore_if"}: per-table [rows, max rowid], which
no UPDATE changes, so neither is trusted any more. Layout 3 keeps, per applied migration, how it is
undone: {"undo": "down-section" | "derived" | "backup", "down": its derived down, "rebuilds_back":
the rebuild back of each rebuild (null: it drops or rewrites a column), "proof": what a restore
under the write lock checks (liteshift.restore; null: no restore is safe), "no_proof": why}.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from liteshift.core.errors import BadInput, ChecksumDrift
from liteshift.core.migrations import Migration, Query

TRACKING_TABLE = "liteshift_migrations"
META_TABLE = "liteshift_meta"
SCHEMA_VERSION = 3
TRACKING_DDL = f"""CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (
    version TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    duration_s REAL NOT NULL,
    flow_run_id TEXT,
    batch TEXT NOT NULL,
    backup_path TEXT,
    fingerprint TEXT
)"""
META_DDL = f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


class TrackingTooNew(BadInput):
    """The database's liteshift tables were written by a newer liteshift."""


@dataclass(frozen=True)
class TrackingRow:
    """A row of the tracking table: one applied migration."""

    version: str
    name: str
    checksum: str
    applied_at: str
    batch: str
    backup_path: str | None
    fingerprint: str | None

    def record(self) -> dict[str, Any]:
        """How this migration is undone, as its transaction recorded it (layout 3; {} before)."""
        data = json.loads(self.fingerprint or "{}")
        return data if "undo" in data else {}

    def proof(self) -> dict[str, Any] | None:
        """What a restore of the backup must find unchanged (None: no restore can be proven safe)."""
        proof = self.record().get("proof")
        return proof if isinstance(proof, dict) else None

    def undo_path(self) -> str:
        """How a rollback would undo it, in words (the file's down section is checked at rollback)."""
        record = self.record()
        if not record:
            return "down section, else backup (recorded by an older liteshift)"
        kind = {"down-section": "down section", "derived": "derived down", "backup": "backup"}[record["undo"]]
        if record["undo"] == "backup":
            kind += " under the write-ledger proof" if self.proof() else f" refused: {record.get('no_proof')}"
        return kind

    def rebuilt(self) -> list[tuple[str, str]]:
        """(table, definition before) of each table the migration rebuilt, in order: its derived down."""
        return [(t, sql) for t, sql in json.loads(self.fingerprint or "{}").get("rebuilt", [])]


def _exists(con: sqlite3.Connection, name: str) -> bool:
    return (
        con.execute("SELECT 1 FROM sqlite_schema WHERE type='table' AND name=?", (name,)).fetchone()
        is not None
    )


def schema_version(con: sqlite3.Connection) -> int:
    """The layout of liteshift's tables: 0 none yet, 1 liteshift 0.1, else liteshift_meta's value."""
    if not _exists(con, TRACKING_TABLE):
        return 0
    if not _exists(con, META_TABLE):
        return 1
    row = con.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'tracking_schema'").fetchone()
    return int(row[0]) if row else 1


def _refuse_newer(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise TrackingTooNew(
            f"The database's liteshift tables have layout {version}",
            f"this liteshift knows layouts up to {SCHEMA_VERSION}; a newer liteshift wrote them",
            "run the newer liteshift (pip install -U liteshift); nothing was written",
        )


def read_tracking(con: sqlite3.Connection) -> dict[str, TrackingRow]:
    """Tracking rows by version; empty when the table does not exist yet."""
    version = schema_version(con)
    if version == 0:
        return {}
    _refuse_newer(version)
    rows = con.execute(
        f"SELECT version, name, checksum, applied_at, batch, backup_path, fingerprint "
        f"FROM {TRACKING_TABLE} ORDER BY version"
    ).fetchall()
    return {r[0]: TrackingRow(*r) for r in rows}


def ensure_current(con: sqlite3.Connection) -> int:
    """Create or upgrade liteshift's tables to this layout, inside the caller's transaction.

    Returns the layout found before (0 when there was none).
    """
    found = schema_version(con)
    _refuse_newer(found)
    if found == SCHEMA_VERSION:
        return found  # nothing to write
    con.execute(TRACKING_DDL)
    con.execute(META_DDL)
    # Layouts 1 and 2 proved "nothing written" by row counts and max rowids, blind to UPDATEs:
    # their proofs are dropped (the saved definitions of rebuilt tables are kept).
    for version, data in con.execute(
        f"SELECT version, fingerprint FROM {TRACKING_TABLE} WHERE fingerprint IS NOT NULL"
    ).fetchall():
        kept = {k: v for k, v in json.loads(data).items() if k == "rebuilt"} if found < 3 else None
        if kept is not None:
            con.execute(
                f"UPDATE {TRACKING_TABLE} SET fingerprint = ? WHERE version = ?", (json.dumps(kept), version)
            )
    con.execute(
        f"INSERT OR REPLACE INTO {META_TABLE} (key, value) VALUES ('tracking_schema', ?)",
        (str(SCHEMA_VERSION),),
    )
    return found


@dataclass(frozen=True)
class Drift:
    """An applied migration whose file changed since."""

    version: str
    file: str
    applied: str  # checksum when applied
    now: str  # checksum of the file now

    def error(self) -> ChecksumDrift:
        return ChecksumDrift(
            f"Migration {self.file} changed after it was applied",
            f"applied checksum {self.applied}, file checksum now {self.now}",
            "restore the file as it was applied, or write the change as a new migration",
        )


def drifted(migrations: list[Migration], applied: dict[str, TrackingRow]) -> list[Drift]:
    """Applied migrations whose file's checksum is no longer the one recorded, in order."""
    return [
        Drift(m.version, m.path.name, applied[m.version].checksum, m.checksum)
        for m in migrations
        if m.version in applied and applied[m.version].checksum != m.checksum
    ]


def check_drift(migrations: list[Migration], applied: dict[str, TrackingRow]) -> None:
    """Refuse when an applied migration's file changed since it was applied."""
    drift = drifted(migrations, applied)
    if drift:
        raise drift[0].error()


def pending(migrations: list[Migration], applied: dict[str, TrackingRow]) -> list[Migration]:
    """Migrations not yet recorded in the tracking table, in order."""
    return [m for m in migrations if m.version not in applied]


def applied_queries(migrations: list[Migration], applied: dict[str, TrackingRow]) -> list[Query]:
    """The declared queries (sidecars) of the migrations applied to a database: what the
    database was migrated to serve, and what health and maintenance keep timing."""
    return [q for m in migrations if m.version in applied for q in m.queries]
