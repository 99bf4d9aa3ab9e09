"""The optional approval gate: pause with the dry-run plan and go on only when a person approves."""

from __future__ import annotations

from pathlib import Path

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from liteshift.core.errors import BadInput


class ApprovalDenied(BadInput):
    """A person answered the approval form with approve unticked; nothing was written."""


class ApprovalTimedOut(BadInput):
    """Nobody answered the approval form in time; nothing was written."""


class Approval(RunInput):
    """The form the Prefect UI shows on the paused run."""

    approve: bool = Field(False, description="Tick to apply the migration as planned above.")
    comment: str = Field("", description="Why (kept in the run's logs and report).")


def check_answer(answer: Approval, database: Path) -> str:
    """Return a line for the report when approved; raise ApprovalDenied otherwise."""
    if not answer.approve:
        raise ApprovalDenied(
            f"Migration of {database} was not approved",
            f"the reviewer answered: {answer.comment or '(no comment)'}",
            "start a new run when the plan is acceptable; nothing was written",
        )
    return f"approved: {answer.comment or '(no comment)'}"


def ask_approval(plan_markdown: str, database: Path, timeout_s: int) -> str:
    """Pause the flow run (blocking) with the plan as the form's description, then check the answer."""
    try:
        answer = pause_flow_run(
            wait_for_input=Approval.with_initial_data(description=plan_markdown, approve=False),
            timeout=timeout_s,
            poll_interval=2,
        )
    except FlowPauseTimeout:
        raise ApprovalTimedOut(
            f"Migration of {database} was not approved in time",
            f"nobody answered the approval form within {timeout_s} s; nothing was written",
            "approve the next run in the Prefect UI (Resume, tick approve) sooner, raise "
            "approval_timeout_s, or run again",
        ) from None
    return check_answer(answer, database)
