"""Prefect's server on SQLite against PostgreSQL under concurrent runs (docs/DEPLOYING.md).

N concurrent clients each make one trivial flow run's API writes over loopback: create the run,
set RUNNING, 10 log batches of 5 lines, set COMPLETED (13 writes each). A 503 is retried the way
Prefect's client does (5 retries, exponential backoff from 0.5 s). Prints the answers per round.

    .venv/bin/python bench/server_db.py sqlite 30 3
    .venv/bin/python bench/server_db.py postgres 30 3
"""

import asyncio
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deployments"))
import httpx  # noqa: E402
from stack import Stack, down, pg_data_dir, start_server  # noqa: E402

from liteshift.flows.runtime import free_port  # noqa: E402

SEEN: dict = {}
CLIENTS, LOG_BATCHES = int(sys.argv[2]), 10


async def one_run(c: httpx.AsyncClient, flow_id: str, codes: Counter) -> None:
    async def post(path, body):
        # Like Prefect's client: retry a 503 up to 5 times with exponential backoff and jitter.
        for attempt in range(6):
            try:
                r = await c.post(path, json=body)
            except httpx.TransportError as exc:
                codes[type(exc).__name__] += 1
                await asyncio.sleep(0.5 * 2**attempt * (1 + random.random() * 0.2))
                continue
            codes[r.status_code] += 1
            if r.status_code != 503:
                return r
            if "503" not in SEEN:
                SEEN["503"] = r.text[:200]
            await asyncio.sleep(0.5 * 2**attempt * (1 + random.random() * 0.2))
        codes["gave up"] += 1
        return None

    r = await post(
        "/flow_runs/", {"flow_id": flow_id, "name": f"r-{uuid.uuid4().hex[:8]}", "state": {"type": "PENDING"}}
    )
    if r is None or r.status_code >= 300:
        return
    run_id = r.json()["id"]
    await post(f"/flow_runs/{run_id}/set_state", {"state": {"type": "RUNNING"}, "force": True})
    for i in range(LOG_BATCHES):
        now = datetime.now(UTC).isoformat()
        await post(
            "/logs/",
            [
                {"name": "b", "level": 20, "message": f"m{i}-{j}", "timestamp": now, "flow_run_id": run_id}
                for j in range(5)
            ],
        )
    await post(f"/flow_runs/{run_id}/set_state", {"state": {"type": "COMPLETED"}, "force": True})


async def bench(api: str) -> tuple[Counter, float]:
    async with httpx.AsyncClient(base_url=api, timeout=60) as c:
        flow_id = (await c.post("/flows/", json={"name": "bench"})).json()["id"]
        codes: Counter = Counter()
        t = time.monotonic()
        await asyncio.gather(*(one_run(c, flow_id, codes) for _ in range(CLIENTS)))
        return codes, time.monotonic() - t


db = sys.argv[1]
tmp = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="lsbench-"))
stack = Stack(
    run_dir=tmp / "run",
    port=free_port(),
    server_db=db,
    extra_env=(("PREFECT_API_LOG_RETRYABLE_ERRORS", "true"),),
)
try:
    start_server(stack)
    for round_ in range(int(sys.argv[3])):
        codes, secs = asyncio.run(bench(stack.api_url))
        print(f"{db} clients={CLIENTS} round {round_}: {dict(codes)} in {secs:.2f} s", flush=True)
    print("a 503 said:", SEEN.get("503"))
finally:
    down(stack)
    shutil.rmtree(pg_data_dir(stack), ignore_errors=True)
    out = ROOT / "bench" / "out" / "server_db"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(stack.run_dir / "server.log", out / f"server-{db}.log")
    shutil.rmtree(tmp, ignore_errors=True)
