"""support-bot's tasks: triage a ticket; escalate tickets left unresolved.

Publishes `support.ticket_triaged` and `support.ticket_escalated` (email-agent mails the
triaged ones to their team).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from agentsched import EventBus, task
from support_bot import config
from support_bot.tickets import Tickets, escalated, triage

log = logging.getLogger(__name__)


def tickets() -> Tickets:
    return Tickets(config.data_dir() / "tickets.sqlite3")


@task(name="support.triage_ticket", timeout=30, max_retries=2)
async def triage_ticket(ticket_id: int) -> dict[str, Any]:
    """Set a ticket's priority, team and next step, and publish `support.ticket_triaged`."""
    db = tickets()
    ticket = await asyncio.to_thread(db.get, ticket_id)
    if ticket is None:
        raise LookupError(f"ticket {ticket_id} does not exist")
    decision = triage(ticket)
    state = "resolved" if ticket["status"] == "resolved" else "triaged"
    await asyncio.to_thread(db.update, ticket_id, status=state, **decision)
    async with EventBus() as bus:
        await bus.publish(
            "support.ticket_triaged",
            payload={
                "ticket_id": ticket_id,
                "app": ticket["app"],
                "title": ticket["title"],
                **decision,
            },
        )
    log.info("ticket %d triaged: %s for %s", ticket_id, decision["priority"], decision["team"])
    return {"ticket_id": ticket_id, **decision}


@task(name="support.escalate_stale", timeout=60)
async def escalate_stale(max_age_minutes: float = 30) -> dict[str, Any]:
    """Raise by one the priority of tickets unresolved and untouched for `max_age_minutes`."""
    db = tickets()
    stale = await asyncio.to_thread(db.stale, dt.timedelta(minutes=max_age_minutes))
    async with EventBus() as bus:
        for ticket in stale:
            priority = escalated(ticket["priority"])
            await asyncio.to_thread(db.update, ticket["id"], priority=priority)
            await bus.publish(
                "support.ticket_escalated",
                payload={
                    "ticket_id": ticket["id"],
                    "title": ticket["title"],
                    "priority": priority,
                },
            )
    return {"escalated": len(stale)}
