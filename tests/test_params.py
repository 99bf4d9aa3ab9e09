"""One typed model per flow: the flow's signature, the command's options and the defaults agree.

The model is the one definition (STYLE.md: "the same parameter list written in three places");
these tests fail when a flow, a command or a model drifts from the others.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

import pytest

from liteshift.archive.config import ArchiveConfig
from liteshift.cli import _params, _parser
from liteshift.core.config import FlowParams, RunConfig, option_name
from liteshift.fleet.config import FleetConfig
from liteshift.flows.archive import archive_rows
from liteshift.flows.fleet import migrate_fleet
from liteshift.flows.health import check_database_health
from liteshift.flows.maintenance import maintain_database
from liteshift.flows.migrate import migrate_database
from liteshift.health.config import HealthConfig, MaintainConfig

FLOWS: list[tuple[Any, type[FlowParams]]] = [
    (archive_rows, ArchiveConfig),
    (maintain_database, MaintainConfig),
    (check_database_health, HealthConfig),
    (migrate_fleet, FleetConfig),
]
# Each command, its model, and the options it has besides the model's fields.
COMMANDS: dict[str, tuple[type[FlowParams], set[str]]] = {
    "run": (RunConfig, set()),
    "plan": (RunConfig, set()),
    "status": (RunConfig, set()),
    "rollback": (RunConfig, {"backup", "finish"}),
    "health": (HealthConfig, set()),
    "maintain": (MaintainConfig, set()),
    "archive": (ArchiveConfig, set()),
    "fleet": (FleetConfig, {"action"}),
}
# Fields a command leaves to the flow (set by a schedule or another flow, not by a person).
NOT_ON_THE_COMMAND_LINE = {
    "health": {"watch", "maintenance_window", "maintenance_deployment", "approve_vacuum"}
    | {"archive_deployment", "archive_parameters"},
    "maintain": {"thresholds"},
}


def _command(name: str) -> argparse.ArgumentParser:
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _options(name: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _command(name)._actions if a.dest not in ("help", "json")}


@pytest.mark.parametrize("flow,model", FLOWS, ids=[m.__name__ for _, m in FLOWS])
def test_the_flow_takes_the_models_fields_with_its_defaults(flow: Any, model: type[FlowParams]) -> None:
    params = inspect.signature(flow.fn).parameters
    assert list(params) == list(model.model_fields)
    for name, info in model.model_fields.items():
        flow_default = params[name].default
        if info.is_required():
            assert flow_default is inspect.Parameter.empty, name
        else:
            assert flow_default == info.get_default(call_default_factory=True), name


def test_the_migrate_flow_takes_every_field_defaulting_to_the_models() -> None:
    params = inspect.signature(migrate_database.fn).parameters
    assert list(params) == list(RunConfig.model_fields)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_option_is_a_field_under_its_derived_name(command: str) -> None:
    model, own = COMMANDS[command]
    for dest, action in _options(command).items():
        if dest in own:
            continue
        assert dest in model.model_fields, f"liteshift {command} {action.option_strings}: no field {dest}"
        assert action.option_strings[0] == option_name(dest)


@pytest.mark.parametrize("command", ["health", "maintain", "archive", "fleet", "run"])
def test_each_field_is_an_option_unless_left_to_the_flow(command: str) -> None:
    model, _ = COMMANDS[command]
    missing = set(model.model_fields) - set(_options(command)) - NOT_ON_THE_COMMAND_LINE.get(command, set())
    assert missing == set()


def test_option_names_drop_the_unit_and_keep_the_words() -> None:
    assert option_name("busy_timeout_ms") == "--busy-timeout"
    assert option_name("pending_timeout_s") == "--pending-timeout"
    assert option_name("revert_window_h") == "--revert-window"
    assert option_name("max_parallel") == "--max-parallel"
    assert option_name("migrations_dir") == "--migrations"
    assert option_name("parameters") == "--param"


def test_fleet_options_reach_the_flow_under_its_own_names() -> None:
    args = _parser().parse_args(
        [
            *("fleet", "run", "--manifest", "fleet.toml", "--fleet-id", "f1", "--max-parallel", "7"),
            *("--pending-timeout", "5", "--approval-timeout", "60", "--max-failures", "2"),
        ]
    )
    cfg = _params(FleetConfig, args)
    assert cfg.flow_parameters() == {
        **FleetConfig(manifest=Path("fleet.toml"), fleet_id="f1").flow_parameters(),
        "max_parallel": 7,
        "pending_timeout_s": 5.0,
        "approval_timeout_s": 60,
        "max_failures": 2,
    }


def test_archive_options_reach_the_flow_under_its_own_names(tmp_path: Path) -> None:
    args = _parser().parse_args(
        [
            *("archive", "--database", "w.db", "--archive", "old.db", "--table", "worklogs"),
            *("--column", "work_date", "--older-than", "18 months", "--budget", "0.01", "--wal-limit", "64"),
        ]
    )
    assert _params(ArchiveConfig, args).flow_parameters() == {
        "database": "w.db",
        "archive": "old.db",
        "table": "worklogs",
        "column": "work_date",
        "before": None,
        "older_than": "18 months",
        "maintenance_window": None,
        "busy_timeout_ms": 5000,
        "budget_s": 0.01,
        "wal_limit_mb": 64.0,
    }


def test_repeatable_options_become_the_flows_list_and_dict() -> None:
    args = _parser().parse_args(
        ["maintain", "--database", "w.db", "--action", "reindex", "--object", "idx_a", "--object", "idx_b"]
    )
    assert _params(MaintainConfig, args).objects == ["idx_a", "idx_b"]
    args = _parser().parse_args(["health", "--database", "w.db", "--threshold", "size_warning_bytes=10"])
    assert _params(HealthConfig, args).thresholds == {"size_warning_bytes": "10"}


def test_a_bad_value_names_the_field_and_the_command() -> None:
    args = _parser().parse_args(
        ["fleet", "run", "--manifest", "m.toml", "--fleet-id", "f", "--max-parallel", "0"]
    )
    with pytest.raises(Exception) as err:
        _params(FleetConfig, args)
    assert (err.value.what, err.value.hint) == (  # type: ignore[attr-defined]
        "Invalid parameter max_parallel",
        "see 'liteshift fleet --help' for the accepted values",
    )


@pytest.mark.parametrize(
    "model,fields",
    [
        (RunConfig, {}),
        (ArchiveConfig, {"archive": "a.db", "table": "t", "column": "c"}),
        (MaintainConfig, {"action": "analyze"}),
        (HealthConfig, {}),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_every_model_with_a_window_refuses_a_bad_one(model: type[FlowParams], fields: dict[str, str]) -> None:
    from liteshift.core.window import WindowInvalid

    with pytest.raises(WindowInvalid, match="Invalid maintenance_window 'Sun 9-5'"):
        model.from_parameters({"database": "x.db", "maintenance_window": "Sun 9-5", **fields})
