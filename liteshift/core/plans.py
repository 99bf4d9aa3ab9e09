"""Query plans: EXPLAIN QUERY PLAN read into which table and index a query uses, and how."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

PLAN_RE = re.compile(
    r"^(?P<op>SEARCH|SCAN)\s+(?:TABLE\s+)?(?P<table>\S+)(?:\s+AS\s+\S+)?"
    r"(?:\s+USING\s+(?:(?P<kind>COVERING|AUTOMATIC(?:\s+PARTIAL)?\s+COVERING)\s+)?INDEX\s+(?P<index>\S+))?"
    r"(?:\s+\((?P<cols>[^)]*)\))?"
)


TERM_RE = re.compile(r"^(?:ANY\((?P<any>[^)]+)\)|(?P<col>[^=<>]+?)(?P<op>=|>|<)\?)$")


@dataclass
class QueryPlan:
    """EXPLAIN QUERY PLAN, parsed: the index used and which of its columns it uses, and how."""

    detail: list[str]
    table: str | None
    index: str | None
    equality: list[str]
    range: list[str]
    full_scan: bool


def explain(con: sqlite3.Connection, sql: str) -> QueryPlan:
    """Run EXPLAIN QUERY PLAN and parse the first SEARCH/SCAN row of the main table."""
    rows = [str(r[3]) for r in con.execute("EXPLAIN QUERY PLAN " + bare(sql))]
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
        return QueryPlan(rows, m.group("table"), index, eq, rng, full)
    return QueryPlan(rows, None, None, [], [], False)


def bare(sql: str) -> str:
    return sql.strip().rstrip(";")
