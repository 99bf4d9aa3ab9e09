"""Fixtures: one Prefect test harness per session, a database factory, and configs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Prefect reads its settings at import: point it at a private home before anything imports it.
_HOME = tempfile.mkdtemp(prefix="liteshift-test-prefect-")
os.environ["PREFECT_HOME"] = _HOME
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from helpers import PROJECT_MIGRATIONS  # noqa: E402

# Every liteshift run of the suite, in process or not, reads migration 001 alone unless a test
# passes its own directory: see helpers.PROJECT_MIGRATIONS.
os.environ["LITESHIFT_MIGRATIONS_DIR"] = str(PROJECT_MIGRATIONS)

from liteshift.core.config import RunConfig  # noqa: E402
from liteshift.demo import build_demo_db  # noqa: E402

DbFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def _template_dbs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, bool], Path]:
    return {}


@pytest.fixture
def make_db(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    _template_dbs: dict[tuple[int, bool], Path],
) -> DbFactory:
    """Build a demo worklog database under tmp_path (copied from a per-session template)."""
    import sqlite3

    def factory(rows: int = 2000, wal: bool = True, name: str = "worklog_storage.db") -> Path:
        key = (rows, wal)
        if key not in _template_dbs:
            template = tmp_path_factory.mktemp("templates") / name
            _template_dbs[key] = build_demo_db(template, rows, wal=wal)
        target = tmp_path / name
        src = sqlite3.connect(_template_dbs[key])
        dst = sqlite3.connect(target)
        src.backup(dst)
        src.close()
        dst.close()
        return target

    return factory


@pytest.fixture
def config(tmp_path: Path) -> Callable[..., RunConfig]:
    """A RunConfig for a database, with fast benchmark settings and no retry delays."""

    def make(database: Path, **overrides: object) -> RunConfig:
        values: dict[str, object] = {
            "database": database,
            "migrations_dir": PROJECT_MIGRATIONS,
            "report_dir": tmp_path / "reports",
            "bench_min_runs": 3,
            "bench_budget_s": 0.0,
            "retry_delay_s": 0.0,
        }
        values.update(overrides)
        return RunConfig(**values)  # type: ignore[arg-type]

    return make
