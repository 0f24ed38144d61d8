"""support-bot's API: tickets (list, read, open, resolve, triage) and the scheduler.

    uvicorn support_bot.main:app --app-dir apps/support-bot

Listens for `aiops.alert` (opens a ticket, publishes `support.ticket_opened`, queues its
triage) and `aiops.recovered` (resolves the open outage tickets of that app).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from agentsched import EventBus, EventMessage, TaskQueue
from agentsched.api import ApiState, agentsched_context, scheduler_app
from agentsched.settings import Settings
from support_bot import tasks

log = logging.getLogger(__name__)


class TicketRequest(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    body: str = Field(default="", max_length=5000)
    app: str | None = Field(default=None, max_length=128)


async def open_ticket(
    queue: TaskQueue,
    bus: EventBus,
    *,
    source: str,
    source_id: str | None,
    app: str | None,
    kind: str,
    title: str,
    body: str,
    alert_id: str | None = None,
) -> int:
    """Open a ticket (once per source id), announce it and queue its triage."""
    ticket_id, created = await asyncio.to_thread(
        lambda: tasks.tickets().open(
            source=source, source_id=source_id, app=app, kind=kind, title=title, body=body
        )
    )
    if created:
        await bus.publish(
            "support.ticket_opened",
            payload={"ticket_id": ticket_id, "alert_id": alert_id, "app": app, "title": title},
        )
        await queue.enqueue(
            tasks.triage_ticket,
            kwargs={"ticket_id": ticket_id},
            idempotency_key=f"triage:{ticket_id}",
        )
    return ticket_id


def _listen(bus: EventBus, state: ApiState) -> None:
    @bus.on("aiops.alert")
    async def on_alert(event: EventMessage) -> None:
        alert = event.payload
        await open_ticket(
            state.queue,
            bus,
            source=event.source_agent,
            source_id=event.id,
            app=alert.get("app"),
            kind=str(alert.get("kind", "alert")),
            title=str(alert.get("summary", "alert"))[:300],
            body=json.dumps(alert.get("details") or {}, sort_keys=True),
            alert_id=alert.get("alert_id"),
        )

    @bus.on("aiops.recovered")
    async def on_recovered(event: EventMessage) -> None:
        db = tasks.tickets()
        for ticket in await asyncio.to_thread(db.find):
            if (
                ticket["app"] == event.payload.get("app")
                and ticket["kind"] in ("down", "no_worker")
                and ticket["status"] != "resolved"
            ):
                await asyncio.to_thread(db.update, ticket["id"], status="resolved")


def _ticket(ticket_id: int) -> dict[str, Any]:
    ticket = tasks.tickets().get(ticket_id)
    if ticket is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"ticket {ticket_id} not found")
    return ticket


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; `settings` default to the AGENTSCHED_* environment, read at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with agentsched_context(app, settings) as state:
            bus = EventBus(settings=state.settings, redis=state.runtime.redis)
            _listen(bus, state)
            async with bus:
                app.state.bus = bus
                yield

    app = scheduler_app("support-bot", lifespan)  # the router, offline /docs, / -> dashboard

    @app.get("/tickets")
    async def list_tickets(
        status_: Annotated[
            Literal["open", "triaged", "resolved"] | None, Query(alias="status")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """Tickets, newest first."""
        items = await asyncio.to_thread(tasks.tickets().find, status_, limit)
        return {"items": items, "total": len(items)}

    @app.get("/tickets/{ticket_id}")
    async def get_ticket(ticket_id: int) -> dict[str, Any]:
        return await asyncio.to_thread(_ticket, ticket_id)

    @app.post("/tickets", status_code=status.HTTP_201_CREATED)
    async def create_ticket(body: TicketRequest, request: Request) -> dict[str, Any]:
        """Open a ticket by hand; its triage is queued at once."""
        state: ApiState = request.app.state.agentsched
        ticket_id = await open_ticket(
            state.queue,
            request.app.state.bus,
            source="api",
            source_id=None,
            app=body.app,
            kind="request",
            title=body.title,
            body=body.body,
        )
        return await asyncio.to_thread(_ticket, ticket_id)

    @app.post("/tickets/{ticket_id}/triage", status_code=status.HTTP_202_ACCEPTED)
    async def triage_again(ticket_id: int, request: Request) -> dict[str, str]:
        """Queue the triage of a ticket again."""
        await asyncio.to_thread(_ticket, ticket_id)
        state: ApiState = request.app.state.agentsched
        execution = await state.queue.enqueue(tasks.triage_ticket, kwargs={"ticket_id": ticket_id})
        return {"execution_id": execution.id, "status": execution.status}

    @app.post("/tickets/{ticket_id}/resolve")
    async def resolve(ticket_id: int) -> dict[str, Any]:
        await asyncio.to_thread(_ticket, ticket_id)
        await asyncio.to_thread(lambda: tasks.tickets().update(ticket_id, status="resolved"))
        return await asyncio.to_thread(_ticket, ticket_id)

    return app


app = create_app()
