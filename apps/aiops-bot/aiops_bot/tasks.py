"""aiops-bot's task: check every app of the platform and publish what changed.

Publishes `aiops.alert` (an app down or without a live worker, or new failed
executions) and `aiops.recovered` (an app that was down answers again).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import httpx

from agentsched import EventBus, get_settings, task
from aiops_bot import config
from aiops_bot.checks import check_app
from aiops_bot.store import Store

log = logging.getLogger(__name__)
# This worker process's start: apps get their start-up grace again after a restart.
BOOT = dt.datetime.now(dt.UTC).isoformat()


def store() -> Store:
    grace = config.startup_grace()
    return Store(config.data_dir() / "aiops.sqlite3", startup_grace=grace, boot=BOOT)


def _headers() -> dict[str, str]:
    key = get_settings().api_key  # the platform shares one API key, if any
    return {"X-API-Key": key.get_secret_value()} if key else {}


@task(name="aiops.check_platform", timeout=60)
async def check_platform() -> dict[str, Any]:
    """Check the health and failed executions of every app in AGENTSCHED_PEERS."""
    db = store()
    peers = config.peers()
    async with httpx.AsyncClient(timeout=config.timeout(), headers=_headers()) as client:
        reports = await asyncio.gather(
            *(check_app(client, app, url, db.since(app)) for app, url in peers.items())
        )
    raised = 0
    async with EventBus() as bus:
        for report in reports:
            alerts, recovered = await asyncio.to_thread(db.record, report)
            for alert in alerts:
                log.warning("alert: %s", alert["summary"])
                await bus.publish("aiops.alert", payload=alert)
            if recovered:
                await bus.publish("aiops.recovered", payload={"app": report.app, "url": report.url})
            raised += len(alerts)
    down = [r.app for r in reports if r.problem]
    return {"checked": len(reports), "down": down, "alerts": raised}
