"""rag-chat's tasks: index a fetched page; ask for stale pages to be fetched again."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from agentsched import EventBus, task
from rag_chat import config

log = logging.getLogger(__name__)


@task(name="rag.index_page", timeout=60, max_retries=2)
async def index_page(url: str, title: str, text: str) -> dict[str, Any]:
    """Add a page to the BM25 index (replacing an older copy) and publish `rag.page_indexed`."""
    length = await asyncio.to_thread(lambda: config.index().add(url, title, text))
    async with EventBus() as bus:
        await bus.publish(
            "rag.page_indexed", payload={"url": url, "title": title, "tokens": length}
        )
    log.info("indexed %s (%d tokens)", url, length)
    return {"url": url, "tokens": length}


@task(name="rag.refresh_stale", timeout=120)
async def refresh_stale(max_age_hours: float | None = None) -> dict[str, Any]:
    """Ask scraper-agent (a targeted `scraper.crawl_requested`) to re-fetch stale pages."""
    age = dt.timedelta(hours=max_age_hours or config.refresh_hours())
    urls = await asyncio.to_thread(lambda: config.index().stale(age))
    async with EventBus() as bus:
        for url in urls:
            await bus.publish(
                "scraper.crawl_requested", payload={"url": url}, target_agent="scraper-agent"
            )
    return {"requested": len(urls)}
