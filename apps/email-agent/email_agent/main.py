"""email-agent's API: the inbox, deliveries into it, digests, the outbox, the scheduler.

    uvicorn email_agent.main:app --app-dir apps/email-agent

Listens for `support.ticket_triaged` and queues a notification mail to the ticket's team.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from pydantic import BaseModel, Field

from agentsched import EventBus, EventMessage
from agentsched.api import ApiState, agentsched_context, scheduler_app
from agentsched.settings import Settings
from email_agent import config, mail, tasks


class Delivery(BaseModel):
    sender: str = Field(min_length=3, max_length=200, examples=["alice@example.com"])
    subject: str = Field(min_length=1, max_length=300)
    body: str = Field(default="", max_length=20_000)


def _listen(bus: EventBus, state: ApiState) -> None:
    @bus.on("support.ticket_triaged")
    async def on_ticket_triaged(event: EventMessage) -> None:
        ticket = event.payload
        body = (
            f"Ticket #{ticket.get('ticket_id')} ({ticket.get('priority')}): "
            f"{ticket.get('title')}\n\nNext step: {ticket.get('next_step')}\n"
        )
        await state.queue.enqueue(
            tasks.send_notification,
            kwargs={
                "to": config.team_address(str(ticket.get("team") or "helpdesk")),
                "subject": f"[{ticket.get('priority')}] {ticket.get('title')}"[:200],
                "body": body,
            },
            idempotency_key=f"event:{event.id}",
        )


def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.agentsched
    return state


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; `settings` default to the AGENTSCHED_* environment, read at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(mail.open_maildir, config.data_dir())  # seeds the demo mail
        async with agentsched_context(app, settings) as state:
            bus = EventBus(settings=state.settings, redis=state.runtime.redis)
            _listen(bus, state)
            async with bus:
                yield

    app = scheduler_app("email-agent", lifespan)  # the router, offline /docs, / -> dashboard

    @app.get("/inbox")
    async def inbox() -> dict[str, Any]:
        """Every message in the maildir, newest first (`seen` once the inbox was checked)."""
        items = await asyncio.to_thread(
            lambda: mail.all_messages(mail.open_maildir(config.data_dir()))
        )
        return {"items": items, "total": len(items)}

    @app.post("/inbox", status_code=status.HTTP_201_CREATED)
    async def deliver(body: Delivery) -> dict[str, str]:
        """Deliver a message into the maildir (as a mail server would)."""
        message = mail.compose(body.sender, "me@example.com", body.subject, body.body)
        key = await asyncio.to_thread(lambda: mail.open_maildir(config.data_dir()).add(message))
        return {"id": key}

    @app.post("/check", status_code=status.HTTP_202_ACCEPTED)
    async def check(request: Request) -> dict[str, str]:
        """Queue an inbox check now (it also runs every minute)."""
        execution = await _state(request).queue.enqueue(tasks.check_inbox)
        return {"execution_id": execution.id, "status": execution.status}

    @app.post("/digest", status_code=status.HTTP_202_ACCEPTED)
    async def digest(request: Request) -> dict[str, str]:
        """Queue a digest now (it also runs at 07:00 on weekdays, Europe/Berlin)."""
        execution = await _state(request).queue.enqueue(tasks.send_digest)
        return {"execution_id": execution.id, "status": execution.status}

    @app.get("/outbox")
    async def outbox() -> dict[str, Any]:
        """The mails written so far, newest first."""
        folder = config.data_dir() / "outbox"
        names = sorted((p.name for p in folder.glob("*.eml")), reverse=True)
        return {"items": names, "total": len(names)}

    return app


app = create_app()
