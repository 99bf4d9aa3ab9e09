"""A real deployment run (flow.serve + run_deployment): paths outside the allowed roots are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from checks import applied_versions, snapshot

pytestmark = pytest.mark.slow

SERVE = (
    "from liteshift.flows.migrate import migrate_database; migrate_database.serve(name='reliability-guard')"
)
RUN = """
import json, sys
from prefect.deployments import run_deployment
run = run_deployment("migrate-database/reliability-guard", parameters=json.loads(sys.argv[1]), timeout=300)
print(json.dumps({"state": run.state.type.value, "message": run.state.message}))
"""


@pytest.fixture
def served(prefect_env, tmp_path):
    """The migrate-database flow served as a deployment, with tmp_path/allowed as the only root."""
    env = {**prefect_env, "LITESHIFT_ALLOWED_ROOTS": str(tmp_path / "allowed")}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while "/deployments/deployment/" not in (tmp_path / "serve.log").read_text():  # registered
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
        time.sleep(0.3)
    yield
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def _run(prefect_env, params):
    out = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(params)],
        env=prefect_env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_deployment_run_is_confined_to_the_allowed_roots(served, prefect_env, new_db, tmp_path, record):
    (tmp_path / "allowed").mkdir()
    outside = new_db(500)
    before = snapshot(outside)
    refused = _run(prefect_env, {"database": str(outside), "report_dir": str(tmp_path / "reports")})
    assert refused["state"] == "FAILED"
    assert f"PathNotAllowed: The database {outside} is outside the allowed roots" in refused["message"]
    assert snapshot(outside) == before
    assert not (tmp_path / "reports").exists()

    inside = new_db(500, directory=tmp_path / "allowed")
    done = _run(prefect_env, {"database": str(inside), "report_dir": str(tmp_path / "allowed" / "r")})
    assert done["state"] == "COMPLETED", done
    assert applied_versions(inside) == ["001"]
    record(kind="deployment-guard", refused=refused["state"], allowed=done["state"], rows_lost=0)
