"""The fleet scenarios run only when asked for: `pytest -m fleet` (see `make fleet`)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "fleet" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="fleet scenarios: run with `make fleet` (pytest -m fleet)")
    for item in items:
        if item.get_closest_marker("fleet") is not None:  # a marker, not a word in a test id
            item.add_marker(skip)
