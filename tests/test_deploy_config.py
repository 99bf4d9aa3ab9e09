"""The deployment-facing options: defaults, one place of validation, and the prefect.yaml file."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from liteshift.core import lock
from liteshift.core.config import RunConfig
from liteshift.core.errors import BadInput
from liteshift.core.window import WindowInvalid, enforce_window
from liteshift.flows.archive import archive_rows
from liteshift.flows.concurrency import GRACE_S, POLL_S, limit_name, orphan_grace_s, slot_orphaned
from liteshift.flows.fleet import inventory_host, migrate_fleet
from liteshift.flows.fleet_batch import migrate_host_batch
from liteshift.flows.health import check_database_health
from liteshift.flows.maintenance import maintain_database
from liteshift.flows.migrate import migrate_database
from liteshift.flows.rollback import rollback_migration

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


def test_deployment_option_defaults():
    cfg = RunConfig.model_validate({"database": "x.db"})
    assert cfg.maintenance_window is None
    assert cfg.require_approval is False
    assert cfg.approval_timeout_s == 3600
    assert cfg.queue_timeout_s == 600.0


def test_the_flow_signature_is_the_config_flat():
    """One definition: the flow takes exactly RunConfig's fields, each defaulting to None (= the model's)."""
    params = inspect.signature(migrate_database.fn).parameters
    assert list(params) == list(RunConfig.model_fields)
    assert all(p.default is None for name, p in params.items() if name != "database")
    assert params["database"].default is inspect.Parameter.empty


def test_the_cli_run_options_are_the_config_fields():
    from liteshift.cli import _parser

    run = next(a for a in _parser()._actions if a.dest == "command").choices["run"]  # type: ignore[union-attr]
    dests = [a.dest for a in run._actions if a.dest not in ("help", "json")]
    assert dests == list(RunConfig.model_fields)


def test_bad_window_is_refused_when_the_config_is_built():
    with pytest.raises(WindowInvalid, match="Invalid maintenance_window 'Sun 9-5'"):
        RunConfig.from_parameters(dict(database="x.db", maintenance_window="Sun 9-5"))


def test_bad_flat_parameter_names_the_field():
    with pytest.raises(BadInput) as err:
        RunConfig.from_parameters(dict(database="x.db", queue_timeout_s=-1))
    assert err.value.what == "Invalid parameter queue_timeout_s"


def _deployments() -> dict[str, dict]:
    data = yaml.safe_load(PREFECT_YAML.read_text())
    return {d["name"]: d for d in data["deployments"]}


def test_prefect_yaml_declares_the_deployments():
    deps = _deployments()
    assert set(deps) == {
        "maintenance-window",
        "adhoc",
        "by-hand",
        "hourly",
        "daily",
        "repair",
        "phase-3",
        "fleet",
        "wave",
        "host",
        "rollout",
    }
    assert deps["maintenance-window"]["schedules"] == [
        {"cron": "0 2 * * 0", "timezone": "Europe/Berlin", "active": True}
    ]
    assert "schedules" not in deps["adhoc"]
    assert {d["work_pool"]["name"] for d in deps.values()} == {"liteshift"}


def test_prefect_yaml_entrypoints_name_the_flows():
    deps = _deployments()
    from prefect.flows import load_flow_from_entrypoint

    flows = {
        "liteshift.flows.migrate:migrate_database": migrate_database,
        "liteshift.flows.rollback:rollback_migration": rollback_migration,
        "liteshift.flows.health:check_database_health": check_database_health,
        "liteshift.flows.maintenance:maintain_database": maintain_database,
        "liteshift.flows.archive:archive_rows": archive_rows,
        "liteshift.flows.fleet:migrate_fleet": migrate_fleet,
        "liteshift.flows.fleet:inventory_host": inventory_host,
        "liteshift.flows.fleet_batch:migrate_host_batch": migrate_host_batch,
    }
    for dep in deps.values():
        flow = load_flow_from_entrypoint(dep["entrypoint"])
        assert flow is flows[dep["entrypoint"]]
        flow.validate_parameters(dep["parameters"] | _required(dep["name"]))  # names and types


def _required(name: str) -> dict[str, object]:
    """Parameters a deployment leaves to the person who starts it."""
    return {
        "adhoc": {"database": "x.db"},
        "by-hand": {"database": "x.db"},
        "repair": {"database": "x.db", "action": "analyze"},
        "fleet": {"database": "x.db"},
        "host": {"host": "a", "patterns": ["/srv/*.db"], "fleet_id": "f"},
        "wave": {"fleet_id": "f", "host": "a", "databases": {"a:/x.db": "/x.db"}, "parameters": {}},
        "rollout": {"manifest": "fleet.toml", "fleet_id": "f"},
    }.get(name, {})


def test_health_schedules_in_their_time_zone_and_archiving_inside_the_window():
    deps = _deployments()
    assert [s["cron"] for s in deps["hourly"]["schedules"]] == ["15 * * * *"]
    assert [s["cron"] for s in deps["daily"]["schedules"]] == ["30 6 * * *"]
    assert {s["timezone"] for d in ("hourly", "daily", "phase-3") for s in deps[d]["schedules"]} == {
        "Europe/Berlin"
    }
    assert (deps["hourly"]["parameters"]["watch"], deps["daily"]["parameters"]["watch"]) == (
        "hourly",
        "daily",
    )
    archive = deps["phase-3"]
    sunday_three = datetime(2026, 11, 29, 3, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert enforce_window(archive["parameters"]["maintenance_window"], sunday_three).startswith("inside")
    assert archive["schedules"][0]["cron"] == "0 3 * * 0"
    assert deps["hourly"]["parameters"]["archive_parameters"]["older_than"] == "18 months"


def test_scheduled_parameters_validate_and_the_cron_lies_inside_the_window():
    dep = _deployments()["maintenance-window"]
    params = migrate_database.validate_parameters(dep["parameters"])  # names and types, as Prefect does
    window = params["maintenance_window"]
    assert window == "Sun 01:00-05:00 Europe/Berlin"
    # cron "0 2 * * 0" with timezone Europe/Berlin: Sundays 02:00 there, inside the window.
    assert dep["schedules"][0]["cron"] == "0 2 * * 0"
    sunday_two = datetime(2026, 11, 29, 2, 0, tzinfo=ZoneInfo(dep["schedules"][0]["timezone"]))
    assert enforce_window(window, sunday_two).startswith("inside")


def test_concurrency_limit_name_is_per_database_path(tmp_path):
    a, b = tmp_path / "a" / "worklog.db", tmp_path / "b" / "worklog.db"
    assert limit_name(a) == limit_name(a)
    assert limit_name(a) != limit_name(b)
    assert limit_name(a).startswith("liteshift-db-worklog-db-")
    assert limit_name(Path("rel.db")) == limit_name(Path.cwd() / "rel.db")


def _holder(pid: int, heartbeat_age_s: float, host: str | None = None) -> lock.Holder:
    now = time.time()
    return lock.Holder("t", host or socket.gethostname(), pid, now - 10, now - heartbeat_age_s)


def test_a_full_limit_is_orphaned_only_without_a_live_lock_holder():
    now = time.time()
    assert slot_orphaned(1, 1, None, now)  # a killed run before or after its lock row
    assert slot_orphaned(1, 1, _holder(os.getpid(), 400, "other-host"), now)  # silent for 400 s
    assert not slot_orphaned(1, 1, _holder(os.getpid(), 1), now)  # a live run migrating
    assert not slot_orphaned(0, 1, None, now)  # the slot is free anyway


def test_orphan_grace_is_short_only_for_a_dead_process_of_this_host():
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert orphan_grace_s(_holder(dead.pid, 1), 5000) == POLL_S
    assert orphan_grace_s(None, 5000) == 5.0 + GRACE_S  # a live run may wait busy_timeout for its lock
    assert orphan_grace_s(_holder(1, 400, "other-host"), 2000) == 2.0 + GRACE_S
