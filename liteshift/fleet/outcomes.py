"""What happened to each database of a fleet, the tally per wave, and the rule that halts the rollout."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from liteshift.core.errors import EXIT_INCOMPLETE, MigrationError
from liteshift.fleet.rollout import Plan

# A failure rate over one or two finished runs is noise (1 of 1 is 100%): max_failures covers those.
MIN_FINISHED_FOR_RATE = 5


Outcome = Literal["completed", "refused", "deferred", "failed", "crashed", "unreached", "running", "pending"]


OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


EXCEPTION_PREFIX = "Flow run encountered an exception:"


STATE_OUTCOMES: dict[str, Outcome] = {
    "COMPLETED": "completed",
    "CRASHED": "crashed",
    "CANCELLED": "unreached",
    "CANCELLING": "unreached",
    "SCHEDULED": "pending",  # also Late, AwaitingRetry, AwaitingConcurrencySlot
    "PENDING": "pending",
    "PAUSED": "pending",  # also Suspended: waiting for an approval
    "RUNNING": "running",
}


def exception_name(message: str | None) -> str | None:
    """The exception class a Failed state's message names, or None when it names none."""
    text = (message or "").strip()
    if not text.startswith(EXCEPTION_PREFIX):
        return None
    name = text[len(EXCEPTION_PREFIX) :].strip().split(":", 1)[0].strip()
    return name.rsplit(".", 1)[-1] if name.replace(".", "").replace("_", "").isalnum() else None


def classify(state_type: str, state_name: str, message: str | None) -> Outcome:
    """The outcome of a child migrate-database run from its Prefect state type, name and message."""
    kind = state_type.rsplit(".", 1)[-1].upper()  # "FAILED" or "StateType.FAILED"
    if kind in STATE_OUTCOMES:
        return STATE_OUTCOMES[kind]
    if kind != "FAILED":
        raise ValueError(f"unknown Prefect state type {state_type!r} (state {state_name!r})")
    error = error_family().get(exception_name(message) or "")
    # The outcome is the error class's own; an exception outside the family (or none named) is
    # something nobody foresaw: treat it as the worst.
    return error.outcome if error is not None else "failed"


def error_family() -> dict[str, type[MigrationError]]:
    """Every MigrationError class imported so far, by name (the flow that classifies imports the
    modules that define them: tests/test_fleet.py checks it sees them all)."""
    found: dict[str, type[MigrationError]] = {}
    todo: list[type[MigrationError]] = [MigrationError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


@dataclass
class Tally:
    """How many targets have each outcome."""

    completed: int = 0
    refused: int = 0
    deferred: int = 0
    failed: int = 0
    crashed: int = 0
    unreached: int = 0
    running: int = 0
    pending: int = 0

    @classmethod
    def of(cls, outcomes: Iterable[Outcome]) -> Tally:
        """Count outcomes."""
        tally = cls()
        for outcome in outcomes:
            setattr(tally, outcome, getattr(tally, outcome) + 1)
        return tally

    def failures(self) -> int:
        """Failed runs. A first crash is retried by the flow, which records a second one as failed."""
        return self.failed

    def finished(self) -> int:
        """Runs that tried the migration to an end; refused and deferred ones never started it."""
        return self.completed + self.failed


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _names(keys: list[str], outcomes: dict[str, Outcome]) -> str:
    shown = ", ".join(f"{k} {outcomes[k]}" for k in keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def should_halt(plan: Plan, wave: str, outcomes: dict[str, Outcome]) -> str | None:
    """None to go on, else the reason to stop before the next wave starts, as one sentence."""
    stages = plan.stages()
    names = [name for name, _ in stages]
    if wave not in names:
        raise ValueError(f"{wave!r} is not a stage of fleet {plan.fleet_id}: {', '.join(names)}")
    if wave == "canary":
        bad = [k for k in plan.canary if outcomes.get(k) in ("failed", "crashed")]
        if bad:
            shown = _names(bad, outcomes)
            return f"The canary failed on {len(bad)} of {_count(len(plan.canary), 'database')} ({shown})."
        if plan.canary and not any(outcomes.get(k) == "completed" for k in plan.canary):
            shown = _names(list(plan.canary), outcomes)
            return (
                f"No canary database completed ({shown}): the waves would start without evidence "
                "that the migration works."
            )
        return None
    so_far = [k for _, keys in stages[: names.index(wave) + 1] for k in keys]
    tally = Tally.of(outcomes[k] for k in so_far if k in outcomes)
    scope = f"up to {wave}" if plan.canary or wave != "wave 1" else "in wave 1"
    failures, finished = tally.failures(), tally.finished()
    if plan.max_failures is not None and failures >= plan.max_failures:
        return (
            f"{_count(failures, 'database')} failed {scope}, which reaches max_failures {plan.max_failures}."
        )
    rate = plan.max_failure_rate
    if rate is not None and finished >= MIN_FINISHED_FOR_RATE and failures / finished >= rate:
        return (
            f"{failures} of {finished} finished migrations failed {scope} ({failures / finished:.0%}), "
            f"at or above max_failure_rate {rate:g}."
        )
    return None


def resume_hint(fleet_id: str, manifest: str) -> str:
    """The command that resumes a fleet: same manifest, same fleet id."""
    return f"liteshift fleet run --manifest {shlex.quote(manifest)} --fleet-id {fleet_id}"


# What a resume starts again by itself, and what only a resume with --retry-failed does.
RETRIED: tuple[Outcome, ...] = ("crashed", "deferred", "unreached")


NEED_A_PERSON: tuple[Outcome, ...] = ("refused", "failed")


class FleetIncomplete(MigrationError):
    """Every wave ran and nothing failed, but some databases are not migrated (refused, deferred,
    unreached). Exit 5: a fleet that skipped databases must not look like a success."""

    exit_code = EXIT_INCOMPLETE


def unfinished(fleet_id: str, manifest: str, counts: dict[str, int]) -> MigrationError | None:
    """None when every database completed; else what is left and how to finish it, as the error
    `fleet run` ends with: exit 1 when any failed, exit 5 when none did."""
    left = {k: n for k, n in counts.items() if k != "completed" and n}
    if not left:
        return None
    total = sum(counts.values())
    order = list(get_args(Outcome))
    why = ", ".join(f"{left[k]} {k}" for k in sorted(left, key=order.index))
    status = f"liteshift fleet status --manifest {shlex.quote(manifest)} --fleet-id {fleet_id}"
    steps = [f"see each one's error with: {status}", f"then resume with: {resume_hint(fleet_id, manifest)}"]
    if any(k in left for k in NEED_A_PERSON):
        steps[-1] += " --retry-failed (once the refused and failed ones are fixed)"
    what = f"Fleet {fleet_id} finished with {sum(left.values())} of {_count(total, 'database')} not migrated"
    if "failed" in left:
        return MigrationError(what, why, "; ".join(steps))
    return FleetIncomplete(what, why, "; ".join(steps))
