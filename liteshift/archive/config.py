"""The parameters of the archive-rows flow and of `liteshift archive`: one validated model."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from liteshift.core.config import FlowParams


class ArchiveConfig(FlowParams):
    """Everything a run of the `archive-rows` flow can be told."""

    command: ClassVar[str] = "archive"

    database: Path = Field(description="The SQLite file whose old rows move.")
    archive: Path = Field(description="The archive SQLite file (created when missing).")
    table: str = Field(description="The table whose rows move.")
    column: str = Field(description="The column compared with the cutoff.")
    before: str | None = Field(None, description="Move rows whose column is < this value.")
    older_than: str | None = Field(
        None, description="A cutoff relative to the run's date: '18 months', '90 days'."
    )
    maintenance_window: str | None = Field(
        None, description="Refuse outside this window; stop between batches when it closes."
    )
    busy_timeout_ms: int = Field(5000, ge=0, description="How long to wait for a lock, in ms.")
    budget_s: float = Field(
        0.005, gt=0, description="Seconds each delete batch may hold the write lock; batches adapt to it."
    )
    wal_limit_mb: float = Field(
        256.0,
        ge=0,
        description="MB of WAL past which an online copy, drop or archive batch waits for checkpoints "
        "to catch up when a reader keeps them from emptying it (up to 10 minutes); 0: no bound.",
    )
