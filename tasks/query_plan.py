"""Step 6, query plans and benchmark: which index each declared query uses, and how fast it runs."""

from __future__ import annotations

import re
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from datetime import date, timedelta

from liteshift import faults
from liteshift import migrations as mig
from liteshift.config import RunConfig
from liteshift.db import connection, quote_ident
from liteshift.errors import CheckFailed
from tasks.common import step_task

PLAN_RE = re.compile(
    r"^(?P<op>SEARCH|SCAN)\s+(?:TABLE\s+)?(?P<table>\S+)(?:\s+AS\s+\S+)?"
    r"(?:\s+USING\s+(?:(?P<kind>COVERING|AUTOMATIC(?:\s+PARTIAL)?\s+COVERING)\s+)?INDEX\s+(?P<index>\S+))?"
    r"(?:\s+\((?P<cols>[^)]*)\))?"
)
TERM_RE = re.compile(r"^(?:ANY\((?P<any>[^)]+)\)|(?P<col>[^=<>]+?)(?P<op>=|>|<)\?)$")
DATE_TERM_RE = re.compile(
    r"date\(\s*(?P<col>\w+)\s*\)\s*(?P<op>>=|<=|=|>|<)\s*'(?P<day>\d{4}-\d{2}-\d{2})'", re.I
)


@dataclass
class Plan:
    """EXPLAIN QUERY PLAN, parsed: the index used and which of its columns it uses, and how."""

    detail: list[str]
    table: str | None
    index: str | None
    equality: list[str]
    range: list[str]
    full_scan: bool


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
    plan: Plan
    before: Timing | None
    after: Timing | None
    warnings: list[str] = field(default_factory=list)
    suggestion: str | None = None
    suggestion_plan: Plan | None = None
    suggestion_timing: Timing | None = None


def explain(con: sqlite3.Connection, sql: str) -> Plan:
    """Run EXPLAIN QUERY PLAN and parse the first SEARCH/SCAN row of the main table."""
    rows = [str(r[3]) for r in con.execute("EXPLAIN QUERY PLAN " + _bare(sql))]
    for detail in rows:
        m = PLAN_RE.match(detail)
        if not m:
            continue
        eq: list[str] = []
        rng: list[str] = []
        for term in (m.group("cols") or "").split(" AND "):
            t = TERM_RE.match(term.strip())
            if not t:
                continue
            if t.group("any"):
                eq.append(t.group("any"))
            elif t.group("op") == "=":
                eq.append(t.group("col").strip())
            else:
                col = t.group("col").strip()
                if col not in rng:
                    rng.append(col)
        index = m.group("index")
        full = m.group("op") == "SCAN" and not m.group("cols")
        return Plan(rows, m.group("table"), index, eq, rng, full)
    return Plan(rows, None, None, [], [], False)


def _bare(sql: str) -> str:
    return sql.strip().rstrip(";")


def time_query(con: sqlite3.Connection, sql: str, cfg: RunConfig) -> Timing:
    """Time a query: at least bench_min_runs samples, then until the budget or bench_max_runs.

    A sample times a batch of executions so that it lasts about BATCH_S (0.2 ms): a query of a few
    microseconds is then timed in batches, so timer and loop overhead do not dominate it.
    p50 / p95 are of the per-execution mean of each sample (for a batched query the p95 is of
    those means, not of single executions).
    """
    text = _bare(sql)
    start = time.perf_counter()
    rows = len(con.execute(text).fetchall())  # warm-up: prepares the statement, counts rows
    batch = _batch_size(con, text, time.perf_counter() - start)
    samples: list[float] = []
    budget_end = time.perf_counter() + cfg.bench_budget_s
    while len(samples) < cfg.bench_max_runs:
        start = time.perf_counter()
        for _ in range(batch):
            con.execute(text).fetchall()
        samples.append((time.perf_counter() - start) * 1000 / batch)
        if len(samples) >= cfg.bench_min_runs and time.perf_counter() >= budget_end:
            break
    samples.sort()
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return Timing(len(samples) * batch, statistics.median(samples), p95, rows, batch)


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


def measure_before(cfg: RunConfig, queries: list[mig.Query]) -> dict[str, Timing]:
    """Time every declared query before the migration (read-only)."""
    with connection(cfg.database, cfg.busy_timeout_ms, readonly=True) as con:
        faults.point("benchmark-before")
        return {q.name: time_query(con, q.sql, cfg) for q in queries}


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


def check_query(con: sqlite3.Connection, q: mig.Query, cfg: RunConfig, before: Timing | None) -> QueryResult:
    """Check one query's plan, warn about function-wrapped index columns, and time it."""
    plan = explain(con, q.sql)
    result = QueryResult(q.name, q.expect_index, plan, before, None)
    if q.expect_index and plan.index != q.expect_index:
        message = f"Query {q.name} does not use index {q.expect_index}: plan is {'; '.join(plan.detail)}"
        if cfg.plan_check == "fail":
            raise CheckFailed(
                message,
                "the index does not serve the query it was added for",
                "fix the query or the index; the migration will be rolled back",
            )
        result.warnings.append(message)
    if plan.index:
        _prefix_warning(con, q, plan, result, cfg)
    result.after = time_query(con, q.sql, cfg)
    return result


def _prefix_warning(
    con: sqlite3.Connection, q: mig.Query, plan: Plan, result: QueryResult, cfg: RunConfig
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
        result.suggestion = " ".join(_bare(rewritten).split())
        result.suggestion_plan = explain(con, rewritten)
        result.suggestion_timing = time_query(con, rewritten, cfg)


def check_query_plans(
    cfg: RunConfig, queries: list[mig.Query], before: dict[str, Timing]
) -> list[QueryResult]:
    """Step 6 proper: plans and after-timings for every declared query."""
    with connection(cfg.database, cfg.busy_timeout_ms, readonly=True) as con:
        faults.point("benchmark-after")
        return [check_query(con, q, cfg, before.get(q.name)) for q in queries]


benchmark_before = step_task(measure_before, "benchmark-before")
query_plans = step_task(check_query_plans, "query-plan-benchmark")
