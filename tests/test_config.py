"""The configuration model: documented defaults, and bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from liteshift.config import DEFAULT_MIGRATIONS_DIR, RunConfig


def test_defaults() -> None:
    cfg = RunConfig(database=Path("w.db"))
    assert cfg.model_dump() == {
        "database": Path("w.db"),
        "migrations_dir": DEFAULT_MIGRATIONS_DIR,
        "backup_dir": None,
        "report_dir": Path("reports"),
        "integrity": "quick",
        "disk_factor": 2.0,
        "busy_timeout_ms": 5000,
        "retries": 3,
        "retry_delay_s": 2.0,
        "plan_check": "fail",
        "bench_min_runs": 7,
        "bench_max_runs": 200,
        "bench_budget_s": 1.0,
        "maintenance_window": None,
        "require_approval": False,
        "approval_timeout_s": 3600,
        "queue_timeout_s": 600.0,
    }
    assert cfg.backup_directory == Path(".")
    assert (
        DEFAULT_MIGRATIONS_DIR.name == "migrations"
        and (DEFAULT_MIGRATIONS_DIR / "001_add_composite_indexes.sql").exists()
    )


@pytest.mark.parametrize("field", ["integrity", "plan_check", "disk_factor", "unknown"])
def test_bad_values_are_refused(field: str) -> None:
    bad = {"integrity": "deep", "plan_check": "maybe", "disk_factor": 0, "unknown": 1}[field]
    with pytest.raises(ValidationError):
        RunConfig(database=Path("w.db"), **{field: bad})
