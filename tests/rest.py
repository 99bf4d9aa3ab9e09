"""The tests' one REST helper for a stack's Prefect server (e2e and the stack tests)."""

from __future__ import annotations

import time
from typing import Any

import httpx
from stack import Stack


def api(stack: Stack, method: str, path: str, body: Any = None) -> Any:
    """One call to the server's REST API; the JSON answer. A 503 ('database is locked' on the
    SQLite-backed server while runs are busy) is retried, as Prefect's own client does."""
    for attempt in range(10):
        r = httpx.request(method, f"{stack.api_url}{path}", json=body, timeout=30)
        if r.status_code != 503:
            break
        time.sleep(0.5 * (attempt + 1))
    r.raise_for_status()
    return r.json() if r.content else None
