"""One migration per database across Prefect: a global concurrency limit keyed by the database.

Prefect only logs a warning when a limit named in `concurrency()` does not exist and lets every
run through, so the limit is created (one slot) before it is used, and used with strict=True.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from liteshift.errors import BadInput
from liteshift.report import slug

PREFIX = "liteshift-db-"
LEASE_S = 60.0


class DatabaseBusy(BadInput):
    """Another Prefect run held this database's concurrency slot past the queue timeout."""


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


@contextmanager
def one_run_per_database(database: Path, timeout_s: float) -> Iterator[str]:
    """Hold the database's slot for a block; raise DatabaseBusy when it stays taken past timeout_s."""
    from prefect.concurrency.sync import concurrency

    name = limit_name(database)
    ensure_limit(name)
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
