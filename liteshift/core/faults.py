"""Named crash points for the fault-injection suite; inert unless LITESHIFT_KILL_AT names one.

A real process is SIGKILLed at the named point so the tests can prove that a crash anywhere
leaves the database consistent. Nothing in normal use sets the variable.
"""

from __future__ import annotations

import os
import signal
from typing import Literal, get_args

ENV = "LITESHIFT_KILL_AT"

# Every point, in the order a run reaches them; tests/reliability kills a run at each one.
Point = Literal[
    "validate-start",
    "validate-end",
    "lock-acquired",
    "backup-partial-created",
    "backup-copying",
    "backup-copied",
    "backup-verified",
    "backup-renamed",
    "rebuild-preparing",
    "rebuild-prepared",
    "rebuild-copy-batch",
    "rebuild-reconcile",
    "rebuild-verify-range",
    "migrate-locked",
    "migrate-between-statements",
    "rebuild-cutover-drained",
    "rebuild-cutover-swapped",
    "migrate-before-commit",
    "migrate-after-commit",
    "rebuild-dropping-old",
    "rebuild-old-dropped",
    "verify-indexes-done",
    "integrity-done",
    "benchmark-after",
    "rollback-start",
    "rollback-downs-committed",
    "rollback-before-restore",
    "rollback-restoring",
    "rollback-verified",
    "lock-before-release",
    "report-written",
    # Maintenance and archiving runs (tests/test_maintenance.py, tests/reliability/test_archive_kill.py).
    "maintenance-acted",
    "archive-prepared",
    "archive-copied",
    "archive-deleted",
    "archive-cleaned",
    "archive-verified",
]
POINTS: tuple[Point, ...] = get_args(Point)


class UnknownPoint(ValueError):
    """LITESHIFT_KILL_AT or a call names a point that does not exist (a typo would never fire)."""


def point(name: Point) -> None:
    """SIGKILL this process when LITESHIFT_KILL_AT equals name."""
    if name not in POINTS:
        raise UnknownPoint(f"{name!r} is not a fault point; see liteshift.faults.POINTS")
    wanted = os.environ.get(ENV)
    if wanted and wanted not in POINTS:
        raise UnknownPoint(f"{ENV}={wanted!r} names no fault point; see liteshift.faults.POINTS")
    if wanted == name:
        os.kill(os.getpid(), signal.SIGKILL)
