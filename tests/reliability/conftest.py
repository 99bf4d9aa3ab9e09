"""Fixtures of the reliability suite: databases from a factory, and real `liteshift run` processes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from checks import BIN, DEFAULT_MIGRATIONS_DIR
from stack import Stack, start, stop, wait_healthy

from liteshift.demo import build_demo_db
from liteshift.flows.runtime import free_port


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long matrix runs only when asked for: `pytest -m slow` (see `make reliability`)."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="long matrix: run with `make reliability` (pytest -m slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def new_db(tmp_path: Path) -> Callable[..., Path]:
    """Build a demo worklog database: make_db(rows=2000, wal=True, name='w.db', directory=tmp_path)."""

    def make(rows: int = 2000, wal: bool = True, name: str = "w.db", directory: Path | None = None) -> Path:
        path = (directory or tmp_path) / name
        return build_demo_db(path, rows, wal=wal)

    return make


@pytest.fixture
def make_migrations(tmp_path: Path) -> Callable[..., Path]:
    """A migrations directory holding the given {file name: text}; '001' copies the project's 001."""
    count = 0

    def make(files: dict[str, str]) -> Path:
        nonlocal count
        count += 1
        directory = tmp_path / f"migrations-{count}"
        directory.mkdir()
        for name, text in files.items():
            (directory / name).write_text(text, "utf-8")
        return directory

    return make


@pytest.fixture
def record() -> Callable[..., None]:
    """Append one scenario's outcome to $LITESHIFT_RESULTS (JSON lines) when it is set."""

    def write(**fields: Any) -> None:
        target = os.environ.get("LITESHIFT_RESULTS")
        if target:
            with open(target, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(fields) + "\n")

    return write


@pytest.fixture(scope="session")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One local `prefect server` (loopback) shared by every `liteshift run` of the session.

    A run against it costs ~3-4 s instead of the ~8 s of an embedded API per process, and
    concurrent runs do not fight over one embedded API database. Started and stopped by PID with
    the same functions as `make up` / `make down`.
    """
    stack = Stack(
        tmp_path_factory.mktemp("prefect-stack"),
        free_port(),
        extra_env=(
            ("PREFECT_UI_ENABLED", "false"),
            ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"),
        ),
    )
    start(
        stack, "server", [stack.prefect, "server", "start", "--host", "127.0.0.1", "--port", str(stack.port)]
    )
    try:
        wait_healthy(stack)
        # Migration 001 for every liteshift process, through the variable a user sets.
        yield {**stack.env(), "LITESHIFT_MIGRATIONS_DIR": str(DEFAULT_MIGRATIONS_DIR)}
    finally:
        stop(stack, "server", grace_s=20)


@pytest.fixture
def run_cli(prefect_env: dict[str, str], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `liteshift ARGS` as a real process; kill_at sets LITESHIFT_KILL_AT."""

    def run(
        *args: str | Path,
        kill_at: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        # Migration 001, through the same variable a user would set (cwd is tmp_path).
        full = {"LITESHIFT_MIGRATIONS_DIR": str(DEFAULT_MIGRATIONS_DIR), **prefect_env, **(env or {})}
        full.pop("LITESHIFT_KILL_AT", None)
        if kill_at:
            full["LITESHIFT_KILL_AT"] = kill_at
        return subprocess.run(
            [str(BIN / "liteshift"), *map(str, args)],
            env=full,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
