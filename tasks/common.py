"""What the step tasks share: the retry policy for transient errors, and how a task is made."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from liteshift.db import is_locked_error


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
