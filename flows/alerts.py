"""Alerting on a Prefect server: the webhook block and the health automations that use it.

The automation files in deployments/automations name their notification block by name
(`block: liteshift-alerts`); Prefect wants its id, which exists only once the block is saved on
the server, so they are installed from here rather than by `prefect automation create`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast
from uuid import UUID

import yaml

from liteshift.core.errors import BadInput

ALERT_BLOCK = "liteshift-alerts"
AUTOMATIONS = ("health-critical.yaml", "health-silent.yaml")


def save_webhook_block(url: str) -> UUID:
    """Create (or replace) the custom webhook block that the health automations post through."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    if not url.startswith(("http://", "https://")):
        raise BadInput(
            f"Invalid alert webhook {url!r}",
            "it is not an http:// or https:// URL",
            "set LITESHIFT_ALERT_WEBHOOK to the URL your chat or pager tool gives for incoming webhooks",
        )
    block = CustomWebhookNotificationBlock.model_validate(
        {
            "name": "liteshift",
            "url": url,
            "method": "POST",
            "json_data": {"subject": "{{subject}}", "body": "{{body}}", "source": "{{name}}"},
        }
    )
    return cast(UUID, block.save(ALERT_BLOCK, overwrite=True))


def automation_spec(path: Path, block_id: UUID, within_s: int | None = None) -> dict[str, Any]:
    """An automation file with its notification block name replaced by the block's id."""
    spec: dict[str, Any] = yaml.safe_load(path.read_text("utf-8"))
    for action in spec["actions"]:
        if action.pop("block", None) == ALERT_BLOCK:
            action["block_document_id"] = str(block_id)
    if within_s is not None:  # tests shorten the proactive window
        spec["trigger"]["within"] = within_s
    return spec


def install_alerting(url: str, directory: Path, silent_within_s: int | None = None) -> list[UUID]:
    """Save the webhook block and (re)create the health automations; return their ids."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    block_id = save_webhook_block(url)
    ids = []
    with get_client(sync_client=True) as client:
        for name in AUTOMATIONS:
            within = silent_within_s if name == "health-silent.yaml" else None
            spec = automation_spec(directory / name, block_id, within)
            for old in client.read_automations_by_name(spec["name"]):
                client.delete_automation(old.id)
            ids.append(client.create_automation(AutomationCore.model_validate(spec)))
    return ids
