"""The throttle of every batched job: batch size steered towards a lock-hold budget, and a pause."""

from __future__ import annotations

import time
from dataclasses import dataclass

from liteshift.core.db import Held


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
    pause_ratio: float = 1.0  # sleep this x the transaction's length, so writers get their turn
    converge_s: float = 30.0  # longest time spent shrinking the backlog before the cut-over
    cache_mib: int = 256  # page cache of the copying connection
    cutover_backlog: int = 100  # reconcile until at most this many keys are left for the cut-over

    def after(self, txn: Held) -> None:
        """Resize from the batch's own work (a COMMIT's sync does not shrink with the batch) and
        pause as long as the lock was held, plus up to one budget when writers kept us waiting."""
        held_s, waited_s = txn.held, txn.waited
        scale = min(2.0, max(0.5, self.budget_s / max(txn.work, 1e-4)))
        self.rows = min(self.max_rows, max(self.min_rows, int(self.rows * scale)))
        time.sleep(min(0.5, held_s * self.pause_ratio + min(waited_s, self.budget_s)))
