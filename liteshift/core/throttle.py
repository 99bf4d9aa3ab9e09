"""The throttle of every batched job: batch size steered towards a lock-hold budget, and a pause."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from liteshift.core.db import Held, own_checkpoints, relaxed_sync
from liteshift.core.errors import DatabaseLocked

MB = 1_000_000


@dataclass
class Throttle:
    """Batch size steered towards a per-transaction budget, with a pause after each batch.

    What a writer of the application feels is how long liteshift holds the write lock: each batch
    is sized so that it holds it about `budget_s`, then pauses as long as it held it. Waiting for
    the lock means the application is writing: liteshift then pauses longer, but its batches do
    not shrink (a smaller batch would hold the lock as often, for less work).
    """

    budget_s: float = 0.02
    rows: int = 2000
    min_rows: int = 100
    max_rows: int = 50_000
    # Sleep this x the transaction's length, so writers get their turn. 0.5 against 1.0 at 1M rows
    # beside a 250 commits/s writer: faster, the writer's p99 unchanged (bench/RESULTS-rebuild.md,
    # "Checkpoints and the pause").
    pause_ratio: float = 0.5
    converge_s: float = 30.0  # longest time spent shrinking the backlog before the cut-over
    cache_mib: int = 256  # page cache of the copying connection
    cutover_backlog: int = 100  # reconcile until at most this many keys are left for the cut-over
    # The WAL bound: past it, and while checkpoints cannot empty the WAL (a reader holds an old
    # snapshot), batches wait instead of growing it; for at most wal_wait_s. 0: no bound.
    wal_limit_mb: float = 256.0
    wal_wait_s: float = 600.0
    wal_peak_bytes: int = 0  # the longest WAL seen after a batch
    wal_paused_s: float = 0.0  # time spent waiting for the WAL to drain
    # In writing(): liteshift checkpoints after each of its COMMITs, outside the lock-hold it
    # measures, instead of SQLite inside them (core.db.own_checkpoints). Off: at 1M rows beside a
    # 250 commits/s writer it made the online rebuild 36 % faster (median of 3: 96.8 s against
    # 152.3 s) but the WAL stopped restarting for long stretches, 243-334 MB at its peak against
    # 40-54 MB (bench/RESULTS-rebuild.md, "Checkpoints and the pause"); why is not understood yet.
    own_checkpoints: bool = False

    @contextmanager
    def writing(self, con: sqlite3.Connection) -> Iterator[None]:
        """The connection of a batched job, for the block: synchronous=NORMAL (core.db.relaxed_sync)
        and, with own_checkpoints, its checkpoints taken by after() right after each COMMIT."""
        with ExitStack() as stack:
            stack.enter_context(relaxed_sync(con))
            if self.own_checkpoints:
                stack.enter_context(own_checkpoints(con))
            yield

    def after(self, txn: Held, con: sqlite3.Connection | None = None) -> None:
        """Resize from the batch's own work (a COMMIT's sync does not shrink with the batch);
        pause pause_ratio x as long as the lock was held, plus up to one budget when writers kept
        us waiting; given the connection, checkpoint and hold the WAL to its bound.

        With own_checkpoints, the batch's pages are checkpointed before the pause (the
        application's commits meanwhile then find them copied already, instead of copying them
        inside their COMMIT), and what the application wrote during the pause just after it: a
        write transaction that begins on a fully copied WAL writes it again from its start.
        """
        held_s, waited_s = txn.held, txn.waited
        scale = min(2.0, max(0.5, self.budget_s / max(txn.work, 1e-4)))
        self.rows = min(self.max_rows, max(self.min_rows, int(self.rows * scale)))
        if con is not None and self.own_checkpoints:
            self.bound_wal(con)
        time.sleep(min(0.5, held_s * self.pause_ratio + min(waited_s, self.budget_s)))
        if con is not None:
            self.bound_wal(con)

    def bound_wal(self, con: sqlite3.Connection, poll_s: float = 0.5) -> None:
        """Checkpoint what can be (PASSIVE: never waits, never blocks a writer), and while the WAL
        is longer than the bound with frames no checkpoint could copy, wait and try again.

        A WAL whose every frame is copied restarts at the next write that begins on it; one
        that cannot be emptied only grows with each batch, and a replica such as Litestream, or
        the disk, pays for that. DatabaseLocked when it stays so for wal_wait_s.
        """
        page = int(con.execute("PRAGMA main.page_size").fetchone()[0])
        waited_since: float | None = None
        while True:
            _, frames, copied = con.execute("PRAGMA main.wal_checkpoint(PASSIVE)").fetchone()
            if frames < 0:  # not in WAL mode
                return
            size = frames * page
            self.wal_peak_bytes = max(self.wal_peak_bytes, size)
            now = time.monotonic()
            if self.wal_limit_mb <= 0 or size <= self.wal_limit_mb * MB or copied >= frames:
                if waited_since is not None:
                    self.wal_paused_s += now - waited_since
                return
            if waited_since is None:
                waited_since = now
            elif now - waited_since >= self.wal_wait_s:
                self.wal_paused_s += now - waited_since
                raise DatabaseLocked(
                    f"The WAL stayed at {size / MB:,.1f} MB, over the {self.wal_limit_mb:g} MB bound, "
                    f"for {self.wal_wait_s:g} s",
                    f"{frames - copied:,} of its {frames:,} frames could not be copied into the database: "
                    "a reader holds an old snapshot, so liteshift stopped adding to the WAL",
                    "end the long read transaction (or raise --wal-limit), then run again",
                )
            time.sleep(poll_s)
