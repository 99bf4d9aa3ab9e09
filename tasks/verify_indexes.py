"""Step 4, index verification: each created index exists exactly as the migration declares it."""

from __future__ import annotations

from dataclasses import dataclass

from liteshift.core import faults
from liteshift.core.config import RunConfig
from liteshift.core.db import connection
from liteshift.core.errors import CheckFailed
from liteshift.core.indexes import IndexDef, index_definition


@dataclass
class IndexReport:
    """One verified index, as the report shows it."""

    name: str
    table: str
    definition: str


def verify_indexes(cfg: RunConfig, declared: dict[str, IndexDef]) -> list[IndexReport]:
    """Compare PRAGMA index_xinfo of each live index with its declared definition."""
    found = []
    with connection(cfg.database, cfg.busy_timeout_ms) as con:
        for name, want in declared.items():
            live = index_definition(con, name)
            if live is None:
                raise CheckFailed(
                    f"Index {name} is missing after the migration",
                    f"expected {want.describe()}",
                    "the migration will be rolled back; check its statements",
                )
            if live != want:
                raise CheckFailed(
                    f"Index {name} does not match its declaration",
                    f"the database has {live.describe()}, the migration declares {want.describe()}",
                    "drop the old index of that name, then run again",
                )
            found.append(IndexReport(name, live.table, live.describe()))
    faults.point("verify-indexes-done")
    return found
