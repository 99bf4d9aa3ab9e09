"""One validated model for a pipeline run's configuration, with documented defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from liteshift.window import parse_window

DEFAULT_MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class RunConfig(BaseModel):
    """Everything a run of the `migrate-database` flow can be told."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    database: Path = Field(description="The SQLite file to migrate.")
    migrations_dir: Path = Field(DEFAULT_MIGRATIONS_DIR, description="Where NNN_slug.sql live.")
    backup_dir: Path | None = Field(None, description="Backups go here; default: beside the database.")
    report_dir: Path = Field(Path("reports"), description="Execution reports (markdown and JSON).")
    integrity: Literal["quick", "full"] = Field(
        "quick", description="Pre-flight check: quick_check (default) or the full integrity_check."
    )
    disk_factor: float = Field(
        2.0, gt=0, description="Free space required, as a multiple of the database size."
    )
    busy_timeout_ms: int = Field(5000, ge=0, description="How long to wait for a lock.")
    retries: int = Field(3, ge=0, description="Retries of a safe step on a locked database.")
    retry_delay_s: float = Field(2.0, ge=0, description="First retry delay; doubles each time.")
    plan_check: Literal["fail", "warn"] = Field(
        "fail", description="When a declared query does not use its expected index."
    )
    bench_min_runs: int = Field(7, ge=1, description="Fewest timed runs of each declared query.")
    bench_max_runs: int = Field(200, ge=1, description="Most timed runs of each declared query.")
    bench_budget_s: float = Field(
        1.0, ge=0, description="Time spent timing each query, per phase, once min runs are done."
    )
    maintenance_window: str | None = Field(
        None,
        description="Refuse to write outside this window, e.g. 'Sun 01:00-05:00 Europe/Berlin'; "
        "None: any time.",
    )
    require_approval: bool = Field(
        False, description="Pause after validation with the dry-run plan until a person approves."
    )
    approval_timeout_s: int = Field(3600, gt=0, description="How long a paused run waits for an answer.")
    queue_timeout_s: float = Field(
        600.0, ge=0, description="How long to wait while another run migrates the same database."
    )

    @field_validator("database", "migrations_dir", "report_dir", "backup_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(value).expanduser()

    @field_validator("maintenance_window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value:
            parse_window(value)  # a bad window fails here, before anything runs
        return value or None

    @property
    def backup_directory(self) -> Path:
        return self.backup_dir if self.backup_dir is not None else self.database.parent
