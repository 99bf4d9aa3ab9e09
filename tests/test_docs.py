"""The README documents every command, option and configuration field a user can set."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from liteshift.cli import _parser
from liteshift.core.config import RunConfig
from liteshift.health.thresholds import Thresholds

README = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
MONITORING = (Path(__file__).resolve().parent.parent / "docs" / "MONITORING.md").read_text("utf-8")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_command_is_in_the_readme(command: str) -> None:
    assert f"liteshift {command}" in README


@pytest.mark.parametrize(
    "option",
    sorted(
        {
            opt
            for sub in _subcommands().values()
            for action in sub._actions
            for opt in action.option_strings
            if opt.startswith("--") and opt != "--help"
        }
    ),
)
def test_every_option_is_in_the_readme(option: str) -> None:
    # A whole token: --backup must not pass because --backup-dir is documented.
    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", README), f"{option} is not in README.md"


def test_a_longer_option_does_not_document_a_shorter_one() -> None:
    assert re.search(r"(?<![\w-])--backup(?![\w-])", "use --backup-dir DIR") is None


def test_migration_format_is_documented() -> None:
    for marker in ("-- migrate:up", "-- migrate:down", "[[query]]", "expect_index", "liteshift_migrations"):
        assert marker in README


def test_every_config_field_has_a_description() -> None:
    assert all(f.description for f in RunConfig.model_fields.values())


@pytest.mark.parametrize("name", sorted(Thresholds.model_fields))
def test_every_health_threshold_is_in_the_monitoring_doc(name: str) -> None:
    assert re.search(rf"\| `{name}` \| [^|]+ \|", MONITORING), name
