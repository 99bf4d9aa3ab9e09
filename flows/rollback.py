"""The `rollback-migration` flow: a subflow of a failed run, or a deployment a person starts."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from liteshift.core import guard
from liteshift.core.config import default_migrations_dir
from liteshift.flows.runtime import is_deployment_run
from liteshift.flows.steps import rollback
from liteshift.flows.ui import publish_rollback
from liteshift.tasks.rollback import Rollback


def _run_name() -> str:
    return f"rollback-{Path(str(flow_run.parameters.get('database', 'db'))).name}"


@flow(name="rollback-migration", flow_run_name=_run_name, log_prints=False)
def rollback_migration(
    database: str,
    migrations_dir: str | None = None,
    versions: list[str] | None = None,
    backup_path: str | None = None,
    busy_timeout_ms: int = 5000,
    rebuild_mode: str = "auto",
) -> Rollback:
    """Undo a migration (default: the last applied batch) and verify the database afterwards."""
    migrations = Path(migrations_dir) if migrations_dir else default_migrations_dir()
    if is_deployment_run():
        guard.check_rollback_paths(database, migrations, backup_path)
    result = rollback(Path(database), migrations, versions, backup_path, busy_timeout_ms, rebuild_mode)
    get_run_logger().info("Rollback of %s: %s", database, result.message)
    publish_rollback(database, result)
    return result
