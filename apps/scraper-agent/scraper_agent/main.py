"""scraper-agent's API: demo pages, scrape/crawl requests, fetched pages, the scheduler.

    uvicorn scraper_agent.main:app --app-dir apps/scraper-agent

Listens for `scraper.crawl_requested` (any app may ask, e.g. rag-chat's `POST /sources`)
and queues a `scraper.fetch_page` for it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, HttpUrl

from agentsched import EventBus, EventMessage
from agentsched.api import ApiState, agentsched_context, scheduler_app
from agentsched.settings import Settings
from scraper_agent import config, demo, tasks

log = logging.getLogger(__name__)


class ScrapeRequest(BaseModel):
    url: HttpUrl


class CrawlRequest(BaseModel):
    seeds: list[HttpUrl] | None = Field(default=None, max_length=50)
    max_pages: int | None = Field(default=None, ge=1, le=500)


class Accepted(BaseModel):
    execution_id: str
    function: str
    status: str


def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.agentsched
    return state


def _listen(bus: EventBus, state: ApiState) -> None:
    @bus.on("scraper.crawl_requested")
    async def on_crawl_requested(event: EventMessage) -> None:
        url = event.payload.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            log.warning("ignoring %s from %s: no http(s) url", event.event_type, event.source_agent)
            return
        await state.queue.enqueue(
            tasks.fetch_page,
            kwargs={"url": url},
            idempotency_key=f"event:{event.id}",
            metadata={"requested_by": event.source_agent},
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; `settings` default to the AGENTSCHED_* environment, read at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with agentsched_context(app, settings) as state:
            bus = EventBus(settings=state.settings, redis=state.runtime.redis)
            _listen(bus, state)
            async with bus:
                yield

    app = scheduler_app("scraper-agent", lifespan)  # the router, offline /docs, / -> dashboard

    @app.get("/demo/pages", response_class=HTMLResponse, tags=["demo"])
    async def demo_index() -> str:
        items = "".join(
            f'<li><a href="/demo/pages/{i}">{title}</a></li>'
            for i, (title, _) in enumerate(demo.PAGES, 1)
        )
        return f"<html><head><title>Demo pages</title></head><body><ul>{items}</ul></body></html>"

    @app.get("/demo/pages/{n}", response_class=HTMLResponse, tags=["demo"])
    async def demo_page(n: int) -> str:
        html = demo.render(n)
        if html is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no demo page {n}")
        return html

    @app.post("/scrape", status_code=status.HTTP_202_ACCEPTED)
    async def scrape(body: ScrapeRequest, request: Request) -> Accepted:
        """Queue a fetch of one URL; the page is published when fetched."""
        execution = await _state(request).queue.enqueue(
            tasks.fetch_page, kwargs={"url": str(body.url)}
        )
        return Accepted(
            execution_id=execution.id, function=execution.function, status=execution.status
        )

    @app.post("/crawl", status_code=status.HTTP_202_ACCEPTED)
    async def crawl(body: CrawlRequest, request: Request) -> Accepted:
        """Queue a crawl from the given seeds (default: the configured ones)."""
        seeds = [str(u) for u in body.seeds] if body.seeds else None
        execution = await _state(request).queue.enqueue(
            tasks.crawl, kwargs={"seeds": seeds, "max_pages": body.max_pages}
        )
        return Accepted(
            execution_id=execution.id, function=execution.function, status=execution.status
        )

    @app.get("/pages")
    async def pages() -> dict[str, Any]:
        """The pages fetched so far (without their text)."""
        items = []
        for path in sorted((config.data_dir() / "pages").glob("*.json")):
            record = json.loads(path.read_text())
            items.append(
                {k: record[k] for k in ("url", "title", "fetched_at")}
                | {"links": len(record["links"])}
            )
        items.sort(key=lambda r: r["fetched_at"], reverse=True)
        return {"items": items, "total": len(items)}

    return app


app = create_app()
