"""The parameters of the migrate-fleet flow and of `liteshift fleet`: one validated model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from liteshift.core.config import FlowParams

CHILD_DEPLOYMENT = "migrate-database/fleet"
BATCH_DEPLOYMENT = "migrate-host-batch/wave"


class FleetConfig(FlowParams):
    """Everything a run of the `migrate-fleet` flow can be told."""

    command: ClassVar[str] = "fleet"

    manifest: Path = Field(description="TOML: one [hosts.NAME] table per host (docs/fleet.md).")
    fleet_id: str = Field(description="Names the plan file and tags every run of the fleet.")
    migrations_dir: Path | None = Field(
        None, description="The migrations; default: the manifest's, else $LITESHIFT_MIGRATIONS_DIR."
    )
    canary: int | list[str] = Field(
        1, description="A count of databases, or host:path keys (comma-separated on the command line)."
    )
    waves: str = Field("100%", description="Cumulative shares after the canary, e.g. 5%,25%,100%.")
    max_failures: int | None = Field(None, description="Halt the waves when this many databases failed.")
    max_failure_rate: float | None = Field(
        None, description="Halt when this share (0-1) of the finished ones failed."
    )
    approve_after_canary: bool = Field(False, description="Pause for a person after the canary.")
    approval_timeout_s: int = Field(3600, gt=0, description="Seconds that pause waits for an answer.")
    pending_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Cancel a run still waiting for its worker after this many seconds (unreached).",
    )
    max_parallel: int = Field(4, ge=1, description="Runs started and not finished per host.")
    retry_failed: bool = Field(
        False,
        description="On a resume, start the refused and failed databases again too (after you fixed them).",
    )
    plan_dir: Path | None = Field(
        None, description="Where fleet-ID.json goes; default: the report directory."
    )
    dispatch: Literal["batch", "per-database"] = Field(
        "batch",
        description="batch: one run per host and stage, each database a task of it; "
        "per-database: one run per database (the cost of a worker's process each).",
    )
    deployment: str = Field(
        CHILD_DEPLOYMENT, description="The deployment each database runs as, with --dispatch per-database."
    )
    batch_deployment: str = Field(
        BATCH_DEPLOYMENT, description="The deployment each host's batch runs as, with --dispatch batch."
    )
    parameters: dict[str, Any] | None = Field(
        None, description="migrate-database parameters for every database; NAME=VALUE with --param."
    )
    replan: bool = Field(
        False,
        description="Plan the fleet id again over what the manifest yields now, replacing its kept plan "
        "(a resume is otherwise refused when they differ).",
    )
