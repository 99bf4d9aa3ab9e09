"""One validated model for a pipeline run's configuration, with documented defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from liteshift.core.errors import BadInput
from liteshift.core.window import parse_window

MIGRATIONS_ENV = "LITESHIFT_MIGRATIONS_DIR"
REPORTS_ENV = "LITESHIFT_REPORT_DIR"
# The demo's own migration ships inside the package, so `liteshift demo` works from anywhere.
DEMO_MIGRATIONS_DIR = Path(__file__).parent.parent / "demo_migrations"
# Below this many rows, a whole online rebuild takes less than a blocking CREATE INDEX.
ONLINE_MIN_ROWS = 100_000


def default_migrations_dir() -> Path:
    """Where the user stands, like dbmate: $LITESHIFT_MIGRATIONS_DIR, else ./migrations."""
    return Path(os.environ.get(MIGRATIONS_ENV) or "migrations")


def default_report_dir() -> Path:
    """$LITESHIFT_REPORT_DIR, else ./reports (relative to the working directory)."""
    return Path(os.environ.get(REPORTS_ENV) or "reports")


# Options name a field without its unit (busy_timeout_ms -> --busy-timeout); a few read better
# in the singular or shorter, and are named here once for every command.
UNIT_SUFFIXES = ("_ms", "_s", "_h", "_mb")
FLAG_NAMES = {
    "migrations_dir": "--migrations",
    "objects": "--object",
    "thresholds": "--threshold",
    "parameters": "--param",
}


def option_name(field: str) -> str:
    """The command-line option that sets a flow parameter: its name, unit dropped, with dashes."""
    if field in FLAG_NAMES:
        return FLAG_NAMES[field]
    for suffix in UNIT_SUFFIXES:
        if field.endswith(suffix):
            field = field.removesuffix(suffix)
            break
    return "--" + field.replace("_", "-")


class FlowParams(BaseModel):
    """The parameters of one flow, validated once: the flow's signature and the command's options
    are checked against its fields (tests/test_params.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    command: ClassVar[str] = ""  # the liteshift command whose --help lists the accepted values
    negatable: ClassVar[bool] = False  # a switch also has its --no-NAME option

    @field_validator("maintenance_window", check_fields=False)  # for the flows that have one
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value:
            parse_window(value)  # a bad window fails here, before anything runs
        return value or None

    @classmethod
    def from_parameters(cls, params: dict[str, Any]) -> Self:
        """Validate flat parameters (None: the default) or raise BadInput naming the field."""
        try:
            return cls(**{k: v for k, v in params.items() if v is not None})
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise BadInput(
                f"Invalid parameter {field}",
                first["msg"],
                f"see 'liteshift {cls.command} --help' for the accepted values",
            ) from None

    def flow_parameters(self) -> dict[str, Any]:
        """The flat, JSON-safe parameters of the flow."""
        return self.model_dump(mode="json")


class RunConfig(FlowParams):
    """Everything a run of the `migrate-database` flow can be told."""

    command: ClassVar[str] = "run"
    negatable: ClassVar[bool] = True  # --no-require-approval, as since the first version

    database: Path = Field(description="The SQLite file to migrate.")
    migrations_dir: Path = Field(
        default_factory=default_migrations_dir,
        description=f"Where NNN_slug.sql live; default ${MIGRATIONS_ENV}, else ./migrations.",
    )
    backup_dir: Path | None = Field(None, description="Backups go here; default: beside the database.")
    report_dir: Path = Field(
        default_factory=default_report_dir,
        description=f"Execution reports (markdown and JSON); default ${REPORTS_ENV}, else ./reports.",
    )
    integrity: Literal["quick", "full"] = Field(
        "quick", description="Pre-flight check: quick_check (default) or the full integrity_check."
    )
    disk_factor: float = Field(
        2.0, gt=0, description="Free space required, as a multiple of the database size."
    )
    busy_timeout_ms: int = Field(5000, ge=0, description="How long to wait for a lock, in ms.")
    retries: int = Field(3, ge=0, description="Retries of a safe step on a locked database.")
    retry_delay_s: float = Field(2.0, ge=0, description="First retry delay in seconds; doubles each time.")
    plan_check: Literal["fail", "warn"] = Field(
        "fail", description="When a declared query does not use its expected index."
    )
    bench_min_runs: int = Field(7, ge=1, description="Fewest timed runs of each declared query.")
    bench_max_runs: int = Field(200, ge=1, description="Most timed runs of each declared query.")
    bench_budget_s: float = Field(
        1.0,
        ge=0,
        description="Most seconds spent timing each declared query once min runs are done (before on "
        "the backup and after on the database, interleaved); it stops sooner once both medians settle.",
    )
    rebuild_mode: Literal["auto", "online", "blocking"] = Field(
        "auto",
        description="Table rebuilds: online (shadow table, batched copy, short cut-over), blocking "
        f"(one transaction), or auto: online from {ONLINE_MIN_ROWS:,} rows when each row keeps its key.",
    )
    index_mode: Literal["auto", "online", "blocking"] = Field(
        "auto",
        description="CREATE INDEX on an existing table: online (the table copied into a shadow that has "
        "the new index, beside the application, then the rebuild's short cut-over), blocking (built "
        f"inside the migration's transaction), or auto: online from {ONLINE_MIN_ROWS:,} rows.",
    )
    revert_window_h: float = Field(
        24.0,
        ge=0,
        description="Hours an online rebuild keeps its old copy, fed with every write, so that a rollback "
        "only replays what changed and cuts over again; 0: drop it at once. Ended early by "
        "'liteshift rollback --finish' or by the next migration.",
    )
    wal_limit_mb: float = Field(
        256.0,
        ge=0,
        description="MB of WAL past which an online copy, drop or archive batch waits for checkpoints "
        "to catch up when a reader keeps them from emptying it (up to 10 minutes); 0: no bound.",
    )
    maintenance_window: str | None = Field(
        None,
        description="Refuse to write outside this window, e.g. 'Sun 01:00-05:00 Europe/Berlin'; "
        "None: any time.",
    )
    require_approval: bool = Field(
        False, description="Pause after validation with the dry-run plan until a person approves."
    )
    approval_timeout_s: int = Field(3600, gt=0, description="Seconds a paused run waits for an answer.")
    queue_timeout_s: float = Field(
        600.0, ge=0, description="Seconds to wait while another run migrates the same database."
    )
    expected_host: str | None = Field(
        None,
        description="Refuse before opening the database unless the run executes on this host "
        "($LITESHIFT_HOST_ID of its worker, else the machine's host name); migrate-fleet sets it.",
    )

    @field_validator("database", "migrations_dir", "report_dir", "backup_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(value).expanduser()

    @property
    def backup_directory(self) -> Path:
        return self.backup_dir if self.backup_dir is not None else self.database.parent
