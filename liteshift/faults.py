"""Named crash points for the fault-injection suite; inert unless LITESHIFT_KILL_AT names one.

A real process is SIGKILLed at the named point so the tests can prove that a crash anywhere
leaves the database consistent. Nothing in normal use sets the variable.
"""

from __future__ import annotations

import os
import signal

ENV = "LITESHIFT_KILL_AT"

# Every point, in the order a run reaches them; tests/reliability kills a run at each one.
POINTS = (
    "validate-start",
    "validate-end",
    "lock-acquired",
    "benchmark-before",
    "backup-partial-created",
    "backup-copying",
    "backup-copied",
    "backup-verified",
    "backup-renamed",
    "migrate-locked",
    "migrate-between-statements",
    "migrate-before-commit",
    "migrate-after-commit",
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
)


def point(name: str) -> None:
    """SIGKILL this process when LITESHIFT_KILL_AT equals name."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
