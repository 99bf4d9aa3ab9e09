"""The `rollback-migration` flow: a subflow of a failed run, or a deployment a person starts."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from liteshift import guard
from liteshift.config import DEFAULT_MIGRATIONS_DIR
from liteshift.report import slug
from tasks.rollback import rollback


def _run_name() -> str:
    return f"rollback-{Path(str(flow_run.parameters.get('database', 'db'))).name}"


@flow(name="rollback-migration", flow_run_name=_run_name, log_prints=False)
def rollback_migration(
    database: str,
    migrations_dir: str | None = None,
    versions: list[str] | None = None,
    backup_path: str | None = None,
    busy_timeout_ms: int = 5000,
) -> dict[str, Any]:
    """Undo a migration (default: the last applied batch) and verify the database afterwards."""
    logger = get_run_logger()
    if guard.is_deployment_run():
        guard.check_rollback_paths(database, migrations_dir or DEFAULT_MIGRATIONS_DIR, backup_path)
    result = rollback(
        Path(database), Path(migrations_dir or DEFAULT_MIGRATIONS_DIR), versions, backup_path, busy_timeout_ms
    )
    logger.info("Rollback of %s: %s", database, result.message)
    create_markdown_artifact(
        key=f"liteshift-rollback-{slug(Path(database).name)}",
        markdown=(
            f"# Rollback of `{database}`\n\n- Action: **{result.action}**: {result.message}\n"
            + "".join(f"- Verified: {v}\n" for v in result.verified)
        ),
        description=f"Rollback of {Path(database).name}",
    )
    return asdict(result)
