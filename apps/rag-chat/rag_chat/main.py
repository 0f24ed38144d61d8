"""rag-chat's API: ask questions, list indexed documents, add sources, the scheduler.

    uvicorn rag_chat.main:app --app-dir apps/rag-chat

Listens for `scraper.page_fetched` and queues a `rag.index_page` for each page, so the
index is built by rag-chat's worker; `GET /ask` reads the same index file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, status
from pydantic import BaseModel, HttpUrl

from agentsched import EventBus, EventMessage
from agentsched.api import ApiState, agentsched_context, scheduler_app
from agentsched.settings import Settings
from rag_chat import config, tasks

log = logging.getLogger(__name__)


class Source(BaseModel):
    title: str
    url: str
    score: float


class Answer(BaseModel):
    query: str
    answer: str
    sources: list[Source]


class SourceRequest(BaseModel):
    url: HttpUrl


def _listen(bus: EventBus, state: ApiState) -> None:
    @bus.on("scraper.page_fetched")
    async def on_page_fetched(event: EventMessage) -> None:
        page = event.payload
        if not all(isinstance(page.get(k), str) for k in ("url", "title", "text")):
            log.warning("ignoring malformed %s %s", event.event_type, event.id)
            return
        await state.queue.enqueue(
            tasks.index_page,
            kwargs={"url": page["url"], "title": page["title"], "text": page["text"]},
            idempotency_key=f"event:{event.id}",  # a redelivered event is indexed once
        )


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

    app = scheduler_app("rag-chat", lifespan)  # the router, offline /docs, / -> dashboard

    @app.get("/ask")
    async def ask(
        q: Annotated[str, Query(min_length=1, max_length=500)],
        k: Annotated[int, Query(ge=1, le=10)] = 3,
    ) -> Answer:
        """Answer from the indexed pages: the best-matching sentences and their sources."""
        text, hits = await asyncio.to_thread(lambda: config.index().answer(q, k))
        return Answer(
            query=q,
            answer=text or "I found nothing about that in the indexed pages.",
            sources=[Source(title=h.title, url=h.url, score=h.score) for h in hits],
        )

    @app.get("/documents")
    async def documents() -> dict[str, Any]:
        """Every indexed page."""
        items = await asyncio.to_thread(lambda: config.index().documents())
        return {"items": items, "total": len(items)}

    @app.post("/sources", status_code=status.HTTP_202_ACCEPTED)
    async def add_source(body: SourceRequest, request: Request) -> dict[str, str]:
        """Ask scraper-agent to fetch a page; it is indexed when scraper-agent publishes it."""
        bus: EventBus = request.app.state.bus
        event = await bus.publish(
            "scraper.crawl_requested", payload={"url": str(body.url)}, target_agent="scraper-agent"
        )
        return {"event_id": event.id, "event_type": event.event_type}

    return app


app = create_app()
