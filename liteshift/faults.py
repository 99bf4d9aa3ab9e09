"""Named crash points for the fault-injection suite; inert unless LITESHIFT_KILL_AT names one.

A real process is SIGKILLed at the named point so the tests can prove that a crash anywhere
leaves the database consistent. Nothing in normal use sets the variable.
"""

from __future__ import annotations

import os
import signal

ENV = "LITESHIFT_KILL_AT"


def point(name: str) -> None:
    """SIGKILL this process when LITESHIFT_KILL_AT equals name."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
