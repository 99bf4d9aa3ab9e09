"""Prefect settings for a command-line run: only what a run needs, and a quiet console."""

from __future__ import annotations

import os

DEFAULTS = {
    # The ephemeral API tries to send telemetry to a network a maintenance host may not reach.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The console shows liteshift's own summary; the full logs still go to the Prefect API / UI.
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL": "CRITICAL",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL": "CRITICAL",
}


def configure_prefect(verbose: bool = False) -> None:
    """Set defaults before Prefect is imported; a value the user exported always wins."""
    for key, value in DEFAULTS.items():
        if verbose and "CONSOLE" in key:
            continue
        os.environ.setdefault(key, value)
