"""Where a deployment run may read and write: its parameters come from anyone with the UI or API.

A command-line run trusts the paths its user typed. A deployment run accepts only paths under the
allowed roots (LITESHIFT_ALLOWED_ROOTS, separated like PATH; default: ./data in the deployment's
working directory), migrations only from the default migrations directory or an allowed root, and
reports only in the default report directory or an allowed root. Symlinks and '..' are resolved
before comparing, and the check runs before anything is written.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from liteshift.core.config import RunConfig, default_migrations_dir, default_report_dir
from liteshift.core.errors import BadInput

ENV = "LITESHIFT_ALLOWED_ROOTS"
DATA_DIR = Path("data")  # relative to the working directory the deployment sets


class PathNotAllowed(BadInput):
    """A deployment run named a path outside the allowed roots."""


def allowed_roots() -> list[Path]:
    """The configured roots, resolved; ./data when none is configured."""
    raw = [p for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]
    return [Path(os.path.realpath(p)) for p in raw] or [Path(os.path.realpath(DATA_DIR))]


def is_under(path: Path | str, root: Path | str) -> bool:
    """True when path, with symlinks and '..' resolved, is root or lies inside it."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, top]) == top


def require_under(path: Path | str, what: str, roots: list[Path]) -> None:
    """Refuse a path outside every root, naming the resolved path and the roots."""
    if any(is_under(path, root) for root in roots):
        return
    raise PathNotAllowed(
        f"The {what} {path} is outside the allowed roots",
        f"it resolves to {os.path.realpath(path)}; a deployment run may only use "
        f"{os.pathsep.join(str(r) for r in roots)}",
        f"move it under an allowed root, or add its directory to {ENV} where the worker runs",
    )


def check_deployment_paths(cfg: RunConfig) -> None:
    """Every path a deployment run reads or writes must lie under an allowed root."""
    roots = allowed_roots()
    require_under(cfg.database, "database", roots)
    require_under(cfg.backup_directory, "backup directory", roots)
    require_under(cfg.report_dir, "report directory", [*roots, default_report_dir()])
    require_under(cfg.migrations_dir, "migrations directory", [*roots, default_migrations_dir()])


class WrongHost(BadInput):
    """A run meant for one host's database reached a worker on another host."""


HOST_ENV = "LITESHIFT_HOST_ID"


def host_id() -> str:
    """This process's host: $LITESHIFT_HOST_ID (set per worker by make up), else the host name."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


def check_host(expected: str | None) -> None:
    """Refuse a run that reached another host than the one holding its database file."""
    if expected is not None and expected != host_id():
        raise WrongHost(
            f"This run is for host {expected!r} but runs on {host_id()!r}",
            "its database file lives on that host; nothing was opened here",
            f"route it to the work queue of {expected!r} (liteshift fleet does), or start the "
            f"worker there with {HOST_ENV}={expected}",
        )


def check_rollback_paths(database: str, migrations_dir: Path | str, backup_path: str | None) -> None:
    """The rollback deployment's paths: the same roots as a migration run."""
    roots = allowed_roots()
    require_under(database, "database", roots)
    require_under(migrations_dir, "migrations directory", [*roots, default_migrations_dir()])
    if backup_path:
        require_under(backup_path, "backup", roots)
