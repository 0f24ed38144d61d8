"""aiops-bot's API: the platform's status, the alerts raised, a check on demand.

    uvicorn aiops_bot.main:app --app-dir apps/aiops-bot

Listens for `support.ticket_opened` and links each alert to the ticket opened for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, status

from agentsched import EventBus, EventMessage
from agentsched.api import ApiState, agentsched_context, scheduler_app
from agentsched.settings import Settings
from aiops_bot import tasks


def _listen(bus: EventBus) -> None:
    @bus.on("support.ticket_opened")
    async def on_ticket_opened(event: EventMessage) -> None:
        alert_id, ticket_id = event.payload.get("alert_id"), event.payload.get("ticket_id")
        if alert_id and ticket_id is not None:
            await asyncio.to_thread(tasks.store().acknowledge, str(alert_id), str(ticket_id))


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; `settings` default to the AGENTSCHED_* environment, read at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with agentsched_context(app, settings) as state:
            bus = EventBus(settings=state.settings, redis=state.runtime.redis)
            _listen(bus)
            async with bus:
                yield

    app = scheduler_app("aiops-bot", lifespan)  # the router, offline /docs, / -> dashboard

    @app.get("/status")
    async def platform_status() -> dict[str, Any]:
        """The last check of every app."""
        items = await asyncio.to_thread(tasks.store().status)
        return {"items": items, "total": len(items)}

    @app.get("/alerts")
    async def alerts(limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
        """The alerts raised, newest first, with the ticket support-bot opened for each."""
        items = await asyncio.to_thread(tasks.store().alerts, limit)
        return {"items": items, "total": len(items)}

    @app.post("/check", status_code=status.HTTP_202_ACCEPTED)
    async def check_now(request: Request) -> dict[str, str]:
        """Queue a platform check now (it also runs every 30 s)."""
        state: ApiState = request.app.state.agentsched
        execution = await state.queue.enqueue(tasks.check_platform)
        return {
            "execution_id": execution.id,
            "function": execution.function,
            "status": execution.status,
        }

    return app


app = create_app()
