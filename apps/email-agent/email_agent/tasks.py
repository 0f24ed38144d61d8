"""email-agent's tasks: check the inbox, send the digest, send a notification.

"Send" writes an `.eml` file to the outbox dir (no SMTP on an offline platform);
publishes `email.inbox_checked`, `email.digest_ready` and `email.sent`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import Any

from agentsched import EventBus, task
from email_agent import config, mail

log = logging.getLogger(__name__)


@task(name="email.check_inbox", timeout=60)
async def check_inbox() -> dict[str, Any]:
    """Read the new messages (marking them seen) and publish `email.inbox_checked`."""
    new = await asyncio.to_thread(lambda: mail.read_new(mail.open_maildir(config.data_dir())))
    urgent = [m["subject"] for m in new if m["urgent"]]
    if new:
        async with EventBus() as bus:
            await bus.publish("email.inbox_checked", payload={"new": len(new), "urgent": urgent})
    return {"new": len(new), "urgent": urgent}


def _since_last_digest() -> tuple[list[dict[str, Any]], str]:
    """Messages delivered since the last digest, and the time of this one."""
    state = config.data_dir() / "digest-state.json"
    last = json.loads(state.read_text())["last_digest_at"] if state.exists() else ""
    now = dt.datetime.now(dt.UTC).isoformat()
    box = mail.open_maildir(config.data_dir())
    messages = [m for m in mail.all_messages(box) if m["received_at"] > last]
    state.write_text(json.dumps({"last_digest_at": now}))
    return messages, now


@task(name="email.send_digest", timeout=120, max_retries=1)
async def send_digest(to: str | None = None) -> dict[str, Any]:
    """Write a digest of the mail since the last digest to the outbox; `email.digest_ready`."""
    messages, now = await asyncio.to_thread(_since_last_digest)
    if not messages:
        return {"messages": 0, "path": None}
    message = mail.digest(messages, to or config.digest_to())
    path = await asyncio.to_thread(mail.write_outbox, config.data_dir(), message, "digest")
    async with EventBus() as bus:
        await bus.publish(
            "email.digest_ready",
            payload={
                "path": str(path),
                "to": message["To"],
                "messages": len(messages),
                "urgent": sum(m["urgent"] for m in messages),
                "created_at": now,
            },
        )
    log.info("digest of %d message(s) written to %s", len(messages), path)
    return {"messages": len(messages), "path": str(path)}


@task(name="email.send_notification", timeout=30, max_retries=2)
async def send_notification(to: str, subject: str, body: str) -> dict[str, Any]:
    """Write one mail to the outbox and publish `email.sent`."""
    message = mail.compose("email-agent@example.com", to, subject, body)
    path = await asyncio.to_thread(mail.write_outbox, config.data_dir(), message, subject)
    async with EventBus() as bus:
        await bus.publish("email.sent", payload={"to": to, "subject": subject, "path": str(path)})
    return {"to": to, "path": str(path)}
