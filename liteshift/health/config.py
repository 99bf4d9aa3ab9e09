"""The parameters of the database-health and database-maintenance flows and of their commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from liteshift.core.config import FlowParams


class HealthConfig(FlowParams):
    """Everything a run of the `database-health` flow can be told (`liteshift health` measures
    with the first five, without Prefect)."""

    command: ClassVar[str] = "health"

    database: Path = Field(description="The SQLite file to measure, read-only.")
    migrations_dir: Path | None = Field(
        None,
        description="Where the declared queries live; default $LITESHIFT_MIGRATIONS_DIR, else ./migrations.",
    )
    report_dir: Path | None = Field(
        None, description="Run reports (failed runs, baselines) and the history; default ./reports."
    )
    thresholds: dict[str, Any] | None = Field(
        None, description="Threshold overrides by name (see docs/health.md); NAME=VALUE on the command line."
    )
    watch: Literal["daily", "hourly"] = Field(
        "daily", description="hourly: measure only in the 7 days after the newest migration; daily: always."
    )
    quick_check: bool | None = Field(
        None, description="Also run PRAGMA quick_check (the flow, when not set: if none ran in 7 days)."
    )
    maintenance_window: str | None = Field(None, description="Repairs it schedules start inside this window.")
    maintenance_deployment: str | None = Field(
        None, description="The database-maintenance deployment a breached finding schedules."
    )
    approve_vacuum: bool = Field(False, description="Let a scheduled repair run a full VACUUM.")
    archive_deployment: str | None = Field(
        None, description="The archive-rows deployment a growth finding schedules."
    )
    archive_parameters: dict[str, Any] | None = Field(
        None, description="Parameters of that archive-rows run (table, column, older_than, archive)."
    )


class MaintainConfig(FlowParams):
    """Everything a run of the `database-maintenance` flow can be told."""

    command: ClassVar[str] = "maintain"

    database: Path = Field(description="The SQLite file to repair.")
    action: Literal["analyze", "reindex", "vacuum"] = Field(description="The one repair to run.")
    objects: list[str] | None = Field(None, description="Tables or indexes (default: all).")
    approve_vacuum: bool = Field(False, description="Allow a full VACUUM (it blocks writers).")
    maintenance_window: str | None = Field(
        None, description="Refuse outside this window, or when the repair would outlast it."
    )
    migrations_dir: Path | None = Field(
        None,
        description="Where the declared queries live; default $LITESHIFT_MIGRATIONS_DIR, else ./migrations.",
    )
    backup_dir: Path | None = Field(None, description="The backup goes here; default: beside the database.")
    report_dir: Path | None = Field(None, description="Reports and the health history; default ./reports.")
    busy_timeout_ms: int = Field(5000, ge=0, description="How long to wait for a lock, in ms.")
    thresholds: dict[str, Any] | None = Field(
        None, description="Threshold overrides by name for the measurements before and after."
    )
