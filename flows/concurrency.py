"""One migration per database across Prefect: a global concurrency limit keyed by the database.

Prefect only logs a warning when a limit named in `concurrency()` does not exist and lets every
run through, so the limit is created (one slot) before it is used, and used with strict=True.

A SIGKILLed holder cannot release its slot. A server revokes the expired lease within about
LEASE_S; but leases live in the server's memory, so after an ephemeral API (`liteshift run`) or a
restarted server nobody ever will. The database's own lock tells who is really there: a run holds
the slot and, within its busy timeout, the lock row. A full slot is freed here, with a warning,
when the lock row names a process of this host that is gone (after one more look), or when there
is no live lock row for longer than a live run needs to write one. The lock inside SQLite stays
the last word, so a wrong guess costs one refused run, never two writers.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from liteshift.core import lock
from liteshift.core.db import connection
from liteshift.core.errors import BadInput, ErrorOutcome
from liteshift.core.names import slug

PREFIX = "liteshift-db-"
LEASE_S = 60.0
POLL_S = 1.0
GRACE_S = 5.0  # beyond the busy timeout: what a live run needs between its slot and its lock row


class DatabaseBusy(BadInput):
    """Another Prefect run held this database's concurrency slot past the queue timeout."""

    outcome: ClassVar[ErrorOutcome] = "deferred"


def limit_name(database: Path) -> str:
    """The limit's name: the file name (readable in the UI) and a hash of its absolute path."""
    resolved = str(Path(database).expanduser().resolve())
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:12]
    return f"{PREFIX}{slug(Path(resolved).name)[:40]}-{digest}"


def ensure_limit(name: str) -> bool:
    """Create the one-slot global concurrency limit when it is missing; True when created here."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:  # another run created it between our read and our create
            return False
    return True


def slot_orphaned(active_slots: int, limit: int, holder: lock.Holder | None, now: float) -> bool:
    """A full limit while the database's own lock has no live holder: the slot's holder is gone."""
    return active_slots >= limit and (holder is None or holder.is_stale(now, lock.STALE_AFTER_S))


def orphan_grace_s(holder: lock.Holder | None, busy_timeout_ms: int) -> float:
    """How long a full slot must look orphaned before it is freed: the stronger the evidence, the less."""
    if holder is not None and holder.process_gone():
        return POLL_S
    return busy_timeout_ms / 1000 + GRACE_S


def _lock_holder(database: Path) -> lock.Holder | None:
    if not Path(database).exists():
        return None
    with connection(database, readonly=True) as con:
        return lock.read_holder(con)


def _orphan_grace_now(client: Any, database: Path, name: str, busy_timeout_ms: int) -> float | None:
    """The grace a full, orphaned-looking slot gets now; None when the slot is not orphaned."""
    gcl = client.read_global_concurrency_limit_by_name(name)
    holder, now = _lock_holder(database), time.time()
    if not slot_orphaned(gcl.active_slots, gcl.limit, holder, now):
        return None
    return orphan_grace_s(holder, busy_timeout_ms)


def free_orphaned_slot(database: Path, name: str, busy_timeout_ms: int = 5000) -> bool:
    """Free the slot when it keeps looking orphaned for its grace; True when freed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    with get_client(sync_client=True) as client:
        since = time.monotonic()
        while (grace := _orphan_grace_now(client, database, name, busy_timeout_ms)) is not None:
            waited = time.monotonic() - since
            if waited >= grace:
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
                logging.getLogger(__name__).warning(
                    "Freed the concurrency slot of %s: taken for %.1f s while %s had no live "
                    "liteshift lock (its run was killed)",
                    name,
                    waited,
                    database,
                )
                return True
            time.sleep(POLL_S)
    return False


@contextmanager
def one_run_per_database(database: Path, timeout_s: float, busy_timeout_ms: int = 5000) -> Iterator[str]:
    """Hold the database's slot for a block; raise DatabaseBusy when it stays taken past timeout_s."""
    from prefect.concurrency.sync import concurrency

    name = limit_name(database)
    ensure_limit(name)
    free_orphaned_slot(database, name, busy_timeout_ms)
    acquired = False
    try:
        # The shortest lease the server allows: a killed holder frees the slot within about a minute.
        with concurrency(
            name, occupy=1, strict=True, timeout_seconds=max(timeout_s, 0.5), lease_duration=LEASE_S
        ):
            acquired = True
            yield name
    except TimeoutError:
        if acquired:  # a TimeoutError from inside the block is not ours to translate
            raise
        raise DatabaseBusy(
            f"Database {database} is being migrated by another Prefect run",
            f"its concurrency limit {name} stayed taken for {timeout_s:g} s",
            "wait for that run (see the Prefect UI) or raise queue_timeout_s; nothing was written",
        ) from None
