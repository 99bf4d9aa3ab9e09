"""The steps as Prefect tasks: thin wrappers over liteshift.tasks, with one retry policy.

The step logic in liteshift.tasks imports no Prefect; this module is the only place that turns it
into tasks. Every task is never cached (a migration must not be "remembered"), and the safe ones
retry only on a locked or busy database: a failed check never retries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from liteshift.core.db import is_locked_error
from liteshift.tasks.backup import backup_database
from liteshift.tasks.dry_run import dry_run_or_refuse
from liteshift.tasks.integrity import check_integrity
from liteshift.tasks.migrate import apply_migrations, copy_rebuilds
from liteshift.tasks.query_plan import check_query_plans
from liteshift.tasks.rollback import rollback_database
from liteshift.tasks.validate import validate_database
from liteshift.tasks.verify_indexes import verify_indexes


def retry_on_locked(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only when the failure is a locked or busy database; a failed check never retries."""
    try:
        state.result()
    except BaseException as exc:  # the state's stored exception is re-raised here
        return is_locked_error(exc)
    return False


P = ParamSpec("P")
R = TypeVar("R")


def step_task(fn: Callable[P, R], name: str, retry: bool = True) -> Task[P, R]:
    """The thin Prefect wrapper of a step: never cached; retried only on a locked database."""
    if not retry:
        return task(name=name, cache_policy=NO_CACHE)(fn)
    return task(name=name, cache_policy=NO_CACHE, retries=3, retry_condition_fn=retry_on_locked)(fn)


validate = step_task(validate_database, "validate")
dry_run = step_task(dry_run_or_refuse, "dry-run", retry=False)
backup = step_task(backup_database, "backup")
rebuild_copy = step_task(copy_rebuilds, "rebuild-copy")
migrate = step_task(apply_migrations, "migrate")
verify = step_task(verify_indexes, "verify-indexes")
integrity = step_task(check_integrity, "integrity")
query_plans = step_task(check_query_plans, "query-plan-benchmark")
rollback = step_task(rollback_database, "rollback", retry=False)
