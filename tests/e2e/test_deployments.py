"""End to end, the way Prefect users run liteshift: a real server, a process worker, `prefect deploy`,
`prefect deployment run ... --watch`, results read back through the API, and the UI in Chromium.

One server and worker serve the whole module (liteshift.stack, the code behind `make up`), on a
free loopback port with a temporary PREFECT_HOME; the finalizer stops them by PID even when a
test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import index_names, snapshot, tracked_versions, user_snapshot
from rest import api
from stack import ROOT, Stack, down, up

from liteshift.core import lock
from liteshift.core.db import connection
from liteshift.core.names import db_key
from liteshift.demo import build_demo_db
from liteshift.flows.concurrency import limit_name
from liteshift.flows.runtime import free_port

FIXTURES = ROOT / "tests" / "fixtures"

pytestmark = pytest.mark.e2e

ROWS = 5000
PHASE1_INDEXES = {
    "idx_worklogs_user_range",
    "idx_worklogs_instance_range",
    "idx_billing_rates_lookup",
    "idx_factorial_leaves_company_status",
}
OUTPUT = ROOT / "tests" / "output"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
    "--virtual-time-budget=15000",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, workdir: Path) -> Iterator[Stack]:
    """Server, pool, deployments, zombie automation and worker, stopped by PID at the end."""
    # Deployment runs may only touch allowed roots (liteshift.guard, where present): the test's
    # databases and the fixture migrations.
    roots = ("LITESHIFT_ALLOWED_ROOTS", os.pathsep.join([str(workdir), str(FIXTURES)]))
    s = Stack(run_dir=tmp_path_factory.mktemp("stack"), port=free_port(), worker_poll_s=1, extra_env=(roots,))
    started = time.monotonic()
    try:
        up(s)
        print(f"stack up in {time.monotonic() - started:.1f} s at {s.api_url}")
        yield s
    finally:
        down(s)
        for log in sorted(s.run_dir.glob("*.log")):
            print(f"--- tail of {log.name}\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("databases")


def deployment_run(stack: Stack, name: str, *params: str, watch: bool = True, extra: tuple[str, ...] = ()):
    """`prefect deployment run NAME --param k=v ... [--watch]`: (exit code, output, flow run id)."""
    args = [stack.prefect, "deployment", "run", name, *[a for p in params for a in ("--param", p)], *extra]
    proc = subprocess.run(
        [*args, "--watch"] if watch else args,
        cwd=stack.root,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout + proc.stderr
    found = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert found, out
    return proc.returncode, out, found.group(1)


def flow_run(stack: Stack, run_id: str) -> dict[str, Any]:
    return api(stack, "GET", f"/flow_runs/{run_id}")


def wait_state(stack: Stack, run_id: str, types: set[str], timeout_s: float = 120) -> dict[str, Any]:
    """Poll a flow run until its state type is one of types."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = flow_run(stack, run_id)
        if run["state_type"] in types:
            return run
        time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} still {run['state_type']} after {timeout_s} s")


def artifacts(stack: Stack, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's artifacts by key (the latest of each key)."""
    found = api(stack, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    return {a["key"]: a for a in sorted(found, key=lambda a: a["created"]) if a["key"]}


@pytest.fixture(scope="module")
def adhoc(stack: Stack, workdir: Path) -> dict[str, Any]:
    """One successful `migrate-database/adhoc` run on a demo database, shared by the tests below."""
    db = build_demo_db(workdir / "adhoc.db", ROWS)
    started = time.monotonic()
    code, out, run_id = deployment_run(stack, "migrate-database/adhoc", f"database={db}")
    return {"db": db, "code": code, "out": out, "id": run_id, "seconds": time.monotonic() - started}


def test_adhoc_run_completes_with_indexes_and_artifacts(
    stack: Stack, adhoc: dict[str, Any], workdir: Path
) -> None:
    print(f"deployment run --watch took {adhoc['seconds']:.1f} s")
    assert adhoc["code"] == 0, adhoc["out"]
    assert "Flow run finished successfully in 'Completed'" in adhoc["out"]
    assert index_names(adhoc["db"]) >= PHASE1_INDEXES
    run = flow_run(stack, adhoc["id"])
    assert run["name"] == "migrate-adhoc.db"
    assert {"liteshift", "adhoc", f"db-{db_key(workdir / 'adhoc.db')}"} <= set(run["tags"])
    found = artifacts(stack, adhoc["id"])
    assert {
        f"liteshift-report-{db_key(workdir / 'adhoc.db')}",
        f"liteshift-bench-{db_key(workdir / 'adhoc.db')}",
        f"liteshift-backup-{db_key(workdir / 'adhoc.db')}",
        f"liteshift-migrate-{db_key(workdir / 'adhoc.db')}",
    } <= set(found)
    report = found[f"liteshift-report-{db_key(workdir / 'adhoc.db')}"]
    assert report["type"] == "markdown"
    assert report["data"].startswith("# liteshift execution report: adhoc.db")
    assert "- **Status**: COMPLETED" in report["data"]
    assert "| maintenance-window | ✅ passed |" in report["data"]
    bench = json.loads(found[f"liteshift-bench-{db_key(workdir / 'adhoc.db')}"]["data"])
    assert {row["index"] for row in bench} == PHASE1_INDEXES
    assert found[f"liteshift-backup-{db_key(workdir / 'adhoc.db')}"]["data"] == 100.0
    assert found[f"liteshift-migrate-{db_key(workdir / 'adhoc.db')}"]["data"] == 100.0
    limit = api(stack, "GET", f"/v2/concurrency_limits/{limit_name(adhoc['db'])}")
    assert (limit["limit"], limit["active_slots"]) == (1, 0)
    with connection(adhoc["db"], readonly=True) as con:
        assert lock.read_holder(con) is None


def test_failing_run_shows_the_rollback_subflow_and_leaves_the_database_as_it_was(
    stack: Stack, workdir: Path
) -> None:
    db = build_demo_db(workdir / "fails.db", ROWS)
    before = user_snapshot(db)
    code, out, run_id = deployment_run(
        stack,
        "migrate-database/adhoc",
        f"database={db}",
        f"migrations_dir={FIXTURES / 'unusable_index'}",
        "plan_check=fail",
    )
    assert code != 0, out
    run = flow_run(stack, run_id)
    assert run["state_type"] == "FAILED"
    subflows = api(
        stack, "POST", "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}}
    )
    assert [(s["name"], s["state_type"]) for s in subflows] == [("rollback-fails.db", "COMPLETED")]
    report = artifacts(stack, run_id)[f"liteshift-report-{db_key(workdir / 'fails.db')}"]["data"]
    assert "**Error**: Query worklogs_of_company does not use index idx_worklogs_comment" in report
    assert "- Action: down: ran the down of 001_comment_index" in report
    assert f"liteshift-rollback-{db_key(workdir / 'fails.db')}" in artifacts(stack, subflows[0]["id"])
    assert user_snapshot(db) == before  # same user schema, same rows
    assert tracked_versions(db) == []
    with connection(db, readonly=True) as con:
        assert lock.read_holder(con) is None
    assert "idx_worklogs_comment" not in index_names(db)


def test_run_outside_its_window_refuses_before_writing(stack: Stack, workdir: Path) -> None:
    db = build_demo_db(workdir / "closed.db", ROWS)
    digest = snapshot(db)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%a")
    window = f"{tomorrow} 00:00-00:01 UTC"  # never open today
    code, out, run_id = deployment_run(
        stack, "migrate-database/adhoc", f"database={db}", f"maintenance_window={window}"
    )
    assert code != 0, out
    run = flow_run(stack, run_id)
    assert run["state_type"] == "FAILED"
    assert f"Outside the maintenance window '{window}'" in run["state"]["message"]
    assert snapshot(db) == digest
    report = artifacts(stack, run_id)[f"liteshift-report-{db_key(workdir / 'closed.db')}"]["data"]
    assert "| maintenance-window | ❌ failed |" in report


def test_approval_gate_pauses_with_the_plan_then_obeys_the_answer(stack: Stack, workdir: Path) -> None:
    yes_db = build_demo_db(workdir / "yes.db", ROWS)
    no_db = build_demo_db(workdir / "no.db", ROWS)
    no_before = snapshot(no_db)
    runs = {}
    for db in (yes_db, no_db):
        _, _, runs[db.name] = deployment_run(
            stack, "migrate-database/adhoc", f"database={db}", "require_approval=true", watch=False
        )
    for name, run_id in runs.items():
        paused = wait_state(stack, run_id, {"PAUSED", "FAILED", "CRASHED"})
        assert paused["state_type"] == "PAUSED", paused["state"]
        keyset = paused["state"]["state_details"]["run_input_keyset"]
        description = api(stack, "GET", f"/flow_runs/{run_id}/input/{keyset['description']}")
        assert description.startswith(f"# Dry run for {name}")
        assert "idx_worklogs_user_range" in description and "**Write lock**: held" in description
    assert not PHASE1_INDEXES & index_names(yes_db)  # paused: nothing written yet
    api(
        stack,
        "POST",
        f"/flow_runs/{runs['yes.db']}/resume",
        {"run_input": {"approve": True, "comment": "e2e"}},
    )
    api(
        stack,
        "POST",
        f"/flow_runs/{runs['no.db']}/resume",
        {"run_input": {"approve": False, "comment": "no"}},
    )
    done = {n: wait_state(stack, r, {"COMPLETED", "FAILED", "CRASHED"}) for n, r in runs.items()}
    assert done["yes.db"]["state_type"] == "COMPLETED"
    assert index_names(yes_db) >= PHASE1_INDEXES
    yes_report = artifacts(stack, runs["yes.db"])[f"liteshift-report-{db_key(workdir / 'yes.db')}"]
    assert "| approval | ✅ passed |" in yes_report["data"]
    assert done["no.db"]["state_type"] == "FAILED"
    assert (
        f"Migration of {no_db} was not approved: the reviewer answered: no."
        in done["no.db"]["state"]["message"]
    )
    assert snapshot(no_db) == no_before


def test_second_holder_of_a_databases_limit_is_refused(stack: Stack, workdir: Path) -> None:
    db = build_demo_db(workdir / "limited.db", 100)
    hold = (  # as the flow does: the database's slot, then its own lock
        "import sys, time; from pathlib import Path; from liteshift.core import lock\n"
        "from liteshift.flows.concurrency import one_run_per_database\n"
        "with one_run_per_database(Path(sys.argv[1]), 5), lock.held(Path(sys.argv[1])):\n"
        "    print('held', flush=True); time.sleep(8)\n"
    )
    refuse = (
        "import sys; from pathlib import Path; from liteshift.flows.concurrency import one_run_per_database\n"
        "try:\n"
        "    with one_run_per_database(Path(sys.argv[1]), 1): print('acquired')\n"
        "except Exception as exc: print(exc)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(db)], env=stack.env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        second = subprocess.run(
            [sys.executable, "-c", refuse, str(db)],
            env=stack.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.stdout.strip() == (
            f"Database {db} is being migrated by another Prefect run: its concurrency limit "
            f"{limit_name(db)} stayed taken for 1 s. Try: wait for that run (see the Prefect UI) or raise "
            "queue_timeout_s; nothing was written"
        ), second.stderr
    finally:
        holder.kill()
        holder.wait()


def test_sigkilled_run_is_crashed_changes_nothing_and_the_next_run_recovers(
    stack: Stack, workdir: Path
) -> None:
    db = build_demo_db(workdir / "killed.db", ROWS)
    before = snapshot(db)
    env = json.dumps({"LITESHIFT_KILL_AT": "migrate-before-commit"})
    code, out, run_id = deployment_run(
        stack, "migrate-database/adhoc", f"database={db}", extra=("--job-variable", f"env={env}")
    )
    assert code != 0, out
    assert flow_run(stack, run_id)["state_type"] == "CRASHED"
    # The transaction never committed: not even the tracking table exists; only the lock row is new.
    assert {k: v for k, v in snapshot(db).items() if "liteshift_lock" not in k} == before
    with connection(db, readonly=True) as con:
        stuck = lock.read_holder(con)
    assert stuck is not None  # the killed run's lock row is still there ...
    # The next run recovers both the stale lock row and the killed run's concurrency slot.
    started = time.monotonic()
    code, out, _ = deployment_run(stack, "migrate-database/adhoc", f"database={db}")
    print(f"the run after the SIGKILL completed in {time.monotonic() - started:.1f} s")
    assert code == 0, out
    assert index_names(db) >= PHASE1_INDEXES
    with connection(db, readonly=True) as con:
        assert lock.read_holder(con) is None


def test_zombie_automation_is_installed(stack: Stack) -> None:
    found = api(stack, "POST", "/automations/filter", {})
    mine = [a for a in found if a["name"] == "liteshift-crash-zombie-flow-runs"]
    assert len(mine) == 1
    trigger, action = mine[0]["trigger"], mine[0]["actions"][0]
    assert (trigger["posture"], trigger["within"], sorted(trigger["after"])) == (
        "Proactive",
        600.0,
        ["prefect.flow-run.heartbeat"],
    )
    assert (action["type"], action["state"]) == ("change-flow-run-state", "CRASHED")


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed (.ci/run installs it)"
)
def test_ui_renders_the_report_artifact(
    stack: Stack, adhoc: dict[str, Any], tmp_path: Path, workdir: Path
) -> None:
    report = artifacts(stack, adhoc["id"])[f"liteshift-report-{db_key(workdir / 'adhoc.db')}"]
    url = f"http://127.0.0.1:{stack.port}/artifacts/artifact/{report['id']}"
    base = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert "liteshift execution report: adhoc.db" in dom.stdout, dom.stderr[-2000:]
    assert "Can't connect to Server API" not in dom.stdout
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shot = OUTPUT / "ui-report-artifact.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [*base, f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        check=True,
    )
    assert shot.stat().st_size > 10_000
    print(f"screenshot of {url}: {shot}")


def test_scheduled_deployment_is_on_the_server_with_its_window(stack: Stack) -> None:
    dep = api(stack, "GET", "/deployments/name/migrate-database/maintenance-window")
    (schedule,) = dep["schedules"]
    assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"], schedule["active"]) == (
        "0 2 * * 0",
        "Europe/Berlin",
        True,
    )
    assert dep["parameters"]["maintenance_window"] == "Sun 01:00-05:00 Europe/Berlin"
    assert dep["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    ]
    adhoc_dep = api(stack, "GET", "/deployments/name/migrate-database/adhoc")
    assert adhoc_dep["schedules"] == []


def test_rollback_deployment_started_by_hand_undoes_the_last_batch(
    stack: Stack, adhoc: dict[str, Any], workdir: Path
) -> None:
    assert adhoc["code"] == 0
    code, out, run_id = deployment_run(stack, "rollback-migration/by-hand", f"database={adhoc['db']}")
    assert code == 0, out
    assert flow_run(stack, run_id)["name"] == "rollback-adhoc.db"
    assert not PHASE1_INDEXES & index_names(adhoc["db"])
    assert tracked_versions(adhoc["db"]) == []
    report = artifacts(stack, run_id)[f"liteshift-rollback-{db_key(workdir / 'adhoc.db')}"]["data"]
    assert (
        "- Path: **the migration's down section**\n- Action: down: ran the down of 001_add_composite_indexes"
        in report
    )


# ---------------------------------------------------------------------------------------------
# Monitoring: a critical breach notifies a webhook on loopback, the repair is scheduled once per
# window and, run, repairs exactly the bloated index.


class Receiver:
    """A webhook receiver on 127.0.0.1 that keeps the JSON bodies it is sent."""

    def __init__(self) -> None:
        import http.server
        import threading

        bodies: list[dict[str, Any]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.bodies = bodies
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, subject: str, timeout_s: float = 90) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [b for b in self.bodies if subject in b.get("subject", "")]
            if found:
                return found
            time.sleep(0.5)
        raise AssertionError(f"no notification with {subject!r} in {timeout_s} s; got {self.bodies}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _bloated(path: Path) -> Path:
    """A demo database whose idx_worklogs_company lost 40% of its entries at random."""
    import random
    import sqlite3

    build_demo_db(path, 50_000)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("REINDEX")
    con.execute("BEGIN")
    con.executemany(
        "DELETE FROM worklogs WHERE id = ?", [(i,) for i in random.Random(7).sample(range(1, 50_001), 20_000)]
    )
    con.execute("COMMIT")
    con.execute("ANALYZE")
    con.close()
    return path


def test_health_alerts_once_and_schedules_the_repair_that_fixes_the_index(
    stack: Stack, workdir: Path
) -> None:
    from stack import install_alerts

    receiver = Receiver()
    try:
        assert "health alerts installed" in install_alerts(stack, receiver.url, silent_within_s=10)
        db = _bloated(workdir / "health.db")
        hour = datetime.now(UTC).hour
        window = f"daily {hour:02d}:00-{(hour + 2) % 24:02d}:00 UTC"  # open now; the next opening is tomorrow
        params = {
            "database": str(db),
            "migrations_dir": os.environ["LITESHIFT_MIGRATIONS_DIR"],  # an allowed root here
            "report_dir": str(workdir / "health-reports"),
            # A critical size (to notify) and index sizes this small database has (to judge).
            "thresholds": {"index_min_bytes": 65536, "size_warning_bytes": 1000, "size_critical_bytes": 2000},
            "maintenance_window": window,
            "maintenance_deployment": "database-maintenance/repair",
        }
        for _ in range(2):
            code, out, _run = deployment_run(
                stack, "database-health/daily", extra=("--params", json.dumps(params))
            )
            assert code == 0, out
        [note] = receiver.wait("db_bytes critical")
        assert str(db) in note["subject"] and "Action: archive" in note["body"]
        repairs = api(
            stack, "POST", "/flow_runs/filter", {"flow_runs": {"tags": {"all_": ["liteshift-repair"]}}}
        )
        # Two health runs, one run per repair (the daily deployment also names the archive
        # deployment, and the size breach calls for archiving): the idempotency keys.
        by_action = {r["parameters"].get("action", "archive"): r for r in repairs}
        assert sorted(r["parameters"].get("action", "archive") for r in repairs) == ["archive", "reindex"]
        repair = by_action["reindex"]
        assert repair["parameters"]["objects"] == ["idx_worklogs_company"]
        assert repair["state_type"] == "SCHEDULED"
        # Start it now (what the window's opening would do), and let the worker run it.
        api(
            stack,
            "POST",
            f"/flow_runs/{repair['id']}/set_state",
            {
                "state": {
                    "type": "SCHEDULED",
                    "state_details": {"scheduled_time": datetime.now(UTC).isoformat()},
                },
                "force": True,
            },
        )
        done = wait_state(stack, repair["id"], {"COMPLETED", "FAILED", "CRASHED"}, timeout_s=180)
        assert done["state_type"] == "COMPLETED", done["state"]
        code, out, run_id = deployment_run(
            stack, "database-health/daily", extra=("--params", json.dumps(params))
        )
        assert code == 0, out
        table = artifacts(stack, run_id)[f"liteshift-health-table-{db_key(db)}"]["data"]
        rows = json.loads(table) if isinstance(table, str) else table
        index_rows = [
            r for r in rows if r["metric"] == "index_unused_pct" and r["object"] == "idx_worklogs_company"
        ]
        assert [r["severity"] for r in index_rows] == ["ok"]
        assert len(receiver.wait("db_bytes critical")) == 1  # still critical: no second notification
        receiver.wait("no database-health run for 26 hours", timeout_s=120)
    finally:
        receiver.close()
