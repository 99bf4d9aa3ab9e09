"""An application writing worklogs while liteshift runs: one INSERT per commit, busy_timeout 5000.

Usage: writer.py DB OUT_JSON STOP_FILE READY_FILE. Records every committed id and the longest
gap between two commits; stops when STOP_FILE exists and writes OUT_JSON.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time

INSERT = (
    "INSERT INTO worklogs (company_id, team_id, jira_instance, author_email, issue_key, started, "
    "time_spent_seconds, comment) VALUES (?, 1, 'Company Main', 'writer@example.com', 'PRJ-1', "
    "'2025-06-01T00:00:00', 60, 'writer')"
)
PACE_S = 0.002  # at most ~500 commits/s: a busy application, and a core left for liteshift


def main(db: str, out: str, stop: str, ready: str) -> None:
    con = sqlite3.connect(db, isolation_level=None, timeout=5.0)
    con.execute("PRAGMA busy_timeout = 5000")
    con.execute("PRAGMA synchronous = NORMAL")  # the usual setting of a WAL application
    ids: list[int] = []
    errors: list[str] = []
    start = last = time.perf_counter()
    max_gap, max_gap_at = 0.0, 0.0
    while not os.path.exists(stop):
        try:
            rowid = con.execute(INSERT, (1 + len(ids) % 20,)).lastrowid
        except sqlite3.OperationalError as exc:  # locked past the timeout: not committed, try again
            errors.append(str(exc))
            continue
        now = time.perf_counter()
        ids.append(int(rowid or 0))
        if now - last > max_gap:
            max_gap, max_gap_at = now - last, last - start
        last = now
        if len(ids) == 1:
            open(ready, "w").close()
        time.sleep(max(0.0, PACE_S - (time.perf_counter() - now)))
    seconds = time.perf_counter() - start
    con.close()
    result = {
        "ids": ids,
        "errors": errors,
        "commits": len(ids),
        "seconds": seconds,
        "rate": len(ids) / seconds,
        "max_stall_s": max_gap,
        "max_stall_at_s": max_gap_at,
    }
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(*sys.argv[1:5])
