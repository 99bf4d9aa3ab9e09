"""The configuration model: documented defaults, and bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from liteshift.core.config import DEMO_MIGRATIONS_DIR as DEFAULT_MIGRATIONS_DIR
from liteshift.core.config import RunConfig


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LITESHIFT_MIGRATIONS_DIR", raising=False)  # the suite sets it
    cfg = RunConfig(database=Path("w.db"))
    assert cfg.model_dump() == {
        "database": Path("w.db"),
        "migrations_dir": Path("migrations"),
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
        "rebuild_mode": "auto",
        "index_mode": "auto",
        "revert_window_h": 24.0,
        "wal_limit_mb": 256.0,
        "maintenance_window": None,
        "require_approval": False,
        "approval_timeout_s": 3600,
        "queue_timeout_s": 600.0,
        "expected_host": None,
    }
    assert cfg.backup_directory == Path(".")


def test_defaults_come_from_the_environment_then_the_working_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LITESHIFT_MIGRATIONS_DIR", "/srv/migs")
    monkeypatch.setenv("LITESHIFT_REPORT_DIR", "/srv/reports")
    cfg = RunConfig(database=Path("w.db"))
    assert (cfg.migrations_dir, cfg.report_dir) == (Path("/srv/migs"), Path("/srv/reports"))
    monkeypatch.setenv("LITESHIFT_MIGRATIONS_DIR", "")
    assert RunConfig(database=Path("w.db")).migrations_dir == Path("migrations")


def test_the_demo_migration_ships_inside_the_package() -> None:
    import liteshift

    assert DEFAULT_MIGRATIONS_DIR.parent == Path(liteshift.__file__).parent
    assert (DEFAULT_MIGRATIONS_DIR / "001_add_composite_indexes.sql").is_file()


@pytest.mark.parametrize("field", ["integrity", "plan_check", "disk_factor", "unknown"])
def test_bad_values_are_refused(field: str) -> None:
    bad = {"integrity": "deep", "plan_check": "maybe", "disk_factor": 0, "unknown": 1}[field]
    with pytest.raises(ValidationError):
        RunConfig(database=Path("w.db"), **{field: bad})
