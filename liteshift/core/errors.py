"""One error family: every failure says what happened, why, and what to do next."""

from __future__ import annotations

from typing import ClassVar, Literal

# What a fleet records for a database whose run raised the error (liteshift.fleet.outcomes):
# failed: the migration is wrong for it or a check failed, a canary must stop the waves;
# refused: nothing was written, a person must fix the input; deferred: nothing was written,
# not now (the application held the database, or the window), a later fleet run tries again.
ErrorOutcome = Literal["failed", "refused", "deferred"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
# `liteshift health` only: the database was measured and a threshold is breached.
EXIT_WARNING = 3
EXIT_CRITICAL = 4
# `liteshift fleet run` only: every wave ran, nothing failed, but some databases are not migrated
# (refused, deferred, unreached): a script must not read that as success.
EXIT_INCOMPLETE = 5


class MigrationError(Exception):
    """A step could not go on; carries what / why / hint and the CLI exit code."""

    exit_code = EXIT_FAILED
    outcome: ClassVar[ErrorOutcome] = "failed"

    def __init__(self, what: str, why: str = "", hint: str = "") -> None:
        self.what = what
        self.why = why
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The message as one line: what, why, what to do."""
        parts = [self.what]
        if self.why:
            parts.append(self.why)
        if self.hint:
            parts.append(f"Try: {self.hint}")
        return ": ".join(parts[:2]) + (f". {parts[2]}" if len(parts) > 2 else "")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.what, self.why, self.hint))


class BadInput(MigrationError):
    """The input (database, migrations, directories, options) is unusable; nothing was written."""

    exit_code = EXIT_BAD_INPUT
    outcome: ClassVar[ErrorOutcome] = "refused"


class DatabaseLocked(BadInput):
    """Another connection held the write lock past the busy timeout; nothing was written."""

    outcome: ClassVar[ErrorOutcome] = "deferred"


class ChecksumDrift(BadInput):
    """An applied migration's file changed since it was applied."""


class CheckFailed(MigrationError):
    """A verification step found the database not as it must be."""


class RollbackRefused(MigrationError):
    """The rollback stopped instead of discarding data; a person must decide."""
