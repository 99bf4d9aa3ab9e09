"""Step 6, query plans and benchmark: which index each declared query uses, and how fast it runs."""

from __future__ import annotations

import math
import re
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from datetime import date, timedelta

from liteshift.core import faults
from liteshift.core.config import RunConfig
from liteshift.core.db import connection
from liteshift.core.errors import CheckFailed
from liteshift.core.migrations import Query
from liteshift.core.plans import QueryPlan, bare, explain
from liteshift.core.sql import quote_ident

DATE_TERM_RE = re.compile(
    r"date\(\s*(?P<col>\w+)\s*\)\s*(?P<op>>=|<=|=|>|<)\s*'(?P<day>\d{4}-\d{2}-\d{2})'", re.I
)


@dataclass
class Timing:
    """Repeated timings of one query: medians and tails, with the run count."""

    runs: int  # executions timed: samples x batch
    p50_ms: float
    p95_ms: float
    rows: int
    batch: int = 1  # executions per timed sample


@dataclass
class QueryResult:
    """One declared query after the migration, with its before/after timings."""

    name: str
    expect_index: str | None
    plan: QueryPlan
    before: Timing | None
    after: Timing | None
    warnings: list[str] = field(default_factory=list)
    suggestion: str | None = None
    suggestion_plan: QueryPlan | None = None
    suggestion_timing: Timing | None = None


class Sampler:
    """Times one query on one connection, in turns of samples.

    A sample times a batch of executions so that it lasts about BATCH_S (0.2 ms): a query of a few
    microseconds is then timed in batches, so timer and loop overhead do not dominate it.
    p50 / p95 are of the per-execution mean of each sample (for a batched query the p95 is of
    those means, not of single executions).
    """

    def __init__(self, con: sqlite3.Connection, sql: str) -> None:
        self.con, self.text = con, bare(sql)
        self.rows = len(con.execute(self.text).fetchall())  # warm-up: prepares, reads the pages
        start = time.perf_counter()
        con.execute(self.text).fetchall()  # a warm execution decides the batch, not the cold one
        warm_s = time.perf_counter() - start
        self.batch = _batch_size(con, self.text, warm_s)
        # A fast query runs once untimed at the start of each turn: the other side's query ran in
        # between and pushed its pages out of the CPU caches. A slow one does not notice.
        self.rewarm = warm_s < REWARM_BELOW_S
        self.samples: list[float] = []
        self.timed_s = 0.0

    def turn(self, slice_s: float, max_runs: int) -> None:
        """Samples for about slice_s (at least one, at most up to max_runs in all)."""
        if self.rewarm:
            self.con.execute(self.text).fetchall()
        end = time.perf_counter() + slice_s
        while len(self.samples) < max_runs:
            start = time.perf_counter()
            for _ in range(self.batch):
                self.con.execute(self.text).fetchall()
            elapsed = time.perf_counter() - start
            self.timed_s += elapsed
            self.samples.append(elapsed * 1000 / self.batch)
            if start + elapsed >= end:
                return

    def settled(self, max_runs: int) -> bool:
        """Timed long enough, and the median's 95% interval within STOP_WIDTH of the median."""
        if len(self.samples) >= max_runs:
            return True
        if self.timed_s < SETTLE_AFTER_S:
            return False
        ordered, n = sorted(self.samples), len(self.samples)
        half = 0.98 * math.sqrt(n)  # order statistics around n/2 give a 95% interval for the median
        lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half))
        median = statistics.median(ordered)
        return median > 0 and (ordered[hi] - ordered[lo]) / median <= STOP_WIDTH

    def timing(self) -> Timing:
        ordered = sorted(self.samples)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        return Timing(len(ordered) * self.batch, statistics.median(ordered), p95, self.rows, self.batch)


SLICE_S = 0.02  # each side's turn: short enough that machine drift hits both sides alike


STOP_WIDTH = 0.10  # stop once the median is known to +-5%, or the budget is spent


SETTLE_AFTER_S = 0.1  # ...but not before each side was timed this long: a few samples agree by luck


REWARM_BELOW_S = 0.001


def _run_until_settled(samplers: list[Sampler], cfg: RunConfig) -> None:
    """Time each in turn, so machine drift hits them alike; stop when all settled or time is up."""
    budget_end = time.perf_counter() + cfg.bench_budget_s
    while True:
        for s in samplers:
            s.turn(SLICE_S, cfg.bench_max_runs)
        if all(len(s.samples) >= cfg.bench_min_runs for s in samplers) and (
            time.perf_counter() >= budget_end or all(s.settled(cfg.bench_max_runs) for s in samplers)
        ):
            return


def time_query(con: sqlite3.Connection, sql: str, cfg: RunConfig) -> Timing:
    """Time a query: at least bench_min_runs samples, until its median settles or the budget ends."""
    sampler = Sampler(con, sql)
    _run_until_settled([sampler], cfg)
    return sampler.timing()


def time_pair(
    before: sqlite3.Connection, after: sqlite3.Connection, sql: str, cfg: RunConfig
) -> tuple[Timing, Timing]:
    """Time a query on the backup (before) and the live database (after), samples interleaved."""
    pair = [Sampler(before, sql), Sampler(after, sql)]
    _run_until_settled(pair, cfg)
    return pair[0].timing(), pair[1].timing()


BATCH_S = 0.0002


def _batch_size(con: sqlite3.Connection, text: str, first_s: float) -> int:
    """Executions per sample so that a sample lasts about BATCH_S (1 for slower queries)."""
    if first_s >= BATCH_S:
        return 1
    start = time.perf_counter()
    for _ in range(10):
        con.execute(text).fetchall()
    each = (time.perf_counter() - start) / 10
    return max(1, min(1000, round(BATCH_S / max(each, 1e-7))))


def range_rewrite(sql: str) -> str | None:
    """Rewrite date(col) comparisons on ISO-8601 text into ranges an index can use."""

    def repl(m: re.Match[str]) -> str:
        col, op, day = m.group("col"), m.group("op"), date.fromisoformat(m.group("day"))
        nxt = (day + timedelta(days=1)).isoformat()
        return {
            ">=": f"{col} >= '{day}'",
            ">": f"{col} >= '{nxt}'",
            "<": f"{col} < '{day}'",
            "<=": f"{col} < '{nxt}'",
            "=": f"{col} >= '{day}' AND {col} < '{nxt}'",
        }[op]

    rewritten = DATE_TERM_RE.sub(repl, sql)
    return None if rewritten == sql else rewritten


def index_columns(con: sqlite3.Connection, index: str) -> list[str]:
    """Key columns of an index, in order."""
    return [str(r[2]) for r in con.execute(f"PRAGMA index_info({quote_ident(index)})")]


def check_query(
    con: sqlite3.Connection, q: Query, cfg: RunConfig, before_con: sqlite3.Connection | None = None
) -> QueryResult:
    """Check one query's plan, warn about function-wrapped index columns, and time it.

    With before_con (the verified backup: exactly the pages before the migration) the query is
    timed there and on the live database in interleaved samples.
    """
    plan = explain(con, q.sql)
    result = QueryResult(q.name, q.expect_index, plan, None, None)
    if q.expect_index and plan.index != q.expect_index:
        message = f"Query {q.name} does not use index {q.expect_index}: plan is {'; '.join(plan.detail)}"
        if cfg.plan_check == "fail":
            raise CheckFailed(
                message,
                "the index does not serve the query it was added for",
                "fix the query or the index; the migration will be rolled back",
            )
        result.warnings.append(message)
    if before_con is not None:
        result.before, result.after = time_pair(before_con, con, q.sql, cfg)
    else:
        result.after = time_query(con, q.sql, cfg)
    if plan.index:
        _prefix_warning(con, q, plan, result, cfg)
    return result


def _prefix_warning(
    con: sqlite3.Connection, q: Query, plan: QueryPlan, result: QueryResult, cfg: RunConfig
) -> None:
    cols = index_columns(con, str(plan.index))
    used = len(plan.equality) + len(plan.range)
    if used >= len(cols):
        return
    unused = cols[used]
    if not re.search(rf"\w+\(\s*{re.escape(unused)}\s*\)", q.sql, re.I):
        return
    result.warnings.append(
        f"{q.name} uses only ({', '.join(cols[:used])}) of {plan.index}: column {unused} is "
        f"wrapped in a function, so the index cannot serve the range on it"
    )
    rewritten = range_rewrite(q.sql)
    if rewritten:
        result.suggestion = " ".join(bare(rewritten).split())
        result.suggestion_plan = explain(con, rewritten)
        result.suggestion_timing = time_query(con, rewritten, cfg)


def check_query_plans(
    cfg: RunConfig, queries: list[Query], backup_path: str | None = None
) -> list[QueryResult]:
    """Step 6 proper: each declared query's plan, and its timing before (backup) and after (live)."""
    with connection(cfg.database, cfg.busy_timeout_ms, readonly=True) as con:
        faults.point("benchmark-after")
        if backup_path is None:
            return [check_query(con, q, cfg) for q in queries]
        with connection(backup_path, immutable=True) as before:
            return [check_query(con, q, cfg, before) for q in queries]
