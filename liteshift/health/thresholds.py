"""The alert thresholds: one validated model, read from a TOML file or defaults (docs/health.md)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from liteshift.core.errors import BadInput

MiB = 1024**2


GiB = 1024**3


RUN_WINDOW = timedelta(days=7)  # the report's monitoring period: failed runs are counted over it


class Thresholds(BaseModel):
    """When a measured figure is a warning or critical; defaults are the phase-1 report's values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query_slow_p95_ms: float = Field(
        500,
        gt=0,
        description="Warning when a declared query's p95 is above it (the report's slow-query log).",
    )
    query_critical_ms: float = Field(
        5000, gt=0, description="Critical when any timed run of a declared query is above it ('> 5 s')."
    )
    size_warning_bytes: int = Field(
        2 * GiB, gt=0, description="Warning when the database file is larger ('> 2 GB: plan archiving')."
    )
    size_critical_bytes: int = Field(
        4 * GiB,
        gt=0,
        description="Critical above it: VACUUM then needs up to twice this in free disk, and every "
        "rebuild, backup and REINDEX lasts twice as long as at the warning size.",
    )
    index_unused_warning_pct: float = Field(
        15, ge=0, le=100, description="Warning when this share of an index's page bytes is unused (REINDEX)."
    )
    index_unused_critical_pct: float = Field(
        50,
        ge=0,
        le=100,
        description="Critical above it: half the index's pages are empty space, every lookup reads "
        "about twice the pages a rebuilt index needs.",
    )
    index_min_bytes: int = Field(
        MiB,
        ge=0,
        description="Indexes smaller than this are not judged: they waste under 1 MiB whatever their "
        "share, and in an index of a few pages one half-empty page moves the share by tens of percent.",
    )
    freelist_warning_pct: float = Field(
        20, ge=0, le=100, description="Warning when this share of the file's pages is free (VACUUM)."
    )
    freelist_critical_pct: float = Field(
        50,
        ge=0,
        le=100,
        description="Critical when more than this share of the file's pages is free (VACUUM).",
    )
    stats_drift_ratio: float = Field(
        0.2,
        gt=0,
        description="ANALYZE a table when |count(*) - sqlite_stat1 estimate| / count(*) is above it.",
    )
    days_left_warning: float = Field(
        30, gt=0, description="Warning when the measured growth reaches size_warning_bytes within these days."
    )
    error_rate_warning_pct: float = Field(
        10, ge=0, le=100, description="Warning when this share of liteshift runs failed over the last 7 days."
    )
    error_rate_critical_pct: float = Field(
        50,
        ge=0,
        le=100,
        description="Critical when this share of liteshift runs failed over the last 7 days.",
    )

    @model_validator(mode="after")
    def _warning_below_critical(self) -> Thresholds:
        for warning, critical in PAIRS:
            low, high = getattr(self, warning), getattr(self, critical)
            if low >= high:
                raise ValueError(f"{warning} ({low}) must be below {critical} ({high})")
        return self

    @classmethod
    def from_parameters(cls, params: dict[str, Any]) -> Thresholds:
        """Validate flat parameters (None: the default) or raise BadInput naming the field(s)."""
        try:
            return cls(**{k: v for k, v in params.items() if v is not None})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            if not where:  # the model's own check: a warning not below its critical
                hint = "lower the warning threshold or raise the critical one; a warning must be below it"
            else:
                hint = "see 'liteshift health --help' for the thresholds and their accepted values"
            raise BadInput(
                f"Invalid parameter {where}" if where else "Invalid thresholds",
                first["msg"].removeprefix("Value error, "),
                hint,
            ) from None


PAIRS = (
    ("query_slow_p95_ms", "query_critical_ms"),
    ("size_warning_bytes", "size_critical_bytes"),
    ("index_unused_warning_pct", "index_unused_critical_pct"),
    ("freelist_warning_pct", "freelist_critical_pct"),
    ("error_rate_warning_pct", "error_rate_critical_pct"),
)
