"""scraper-agent's tasks: fetch a page, crawl from seed URLs; every page is published.

Each fetched page is kept as JSON under the data dir (`pages/`) and announced as
`scraper.page_fetched` (url, title, text, links, fetched_at), which rag-chat indexes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import httpx

from agentsched import EventBus, task
from scraper_agent import config
from scraper_agent.extract import Page, extract

log = logging.getLogger(__name__)
MAX_TEXT = 50_000  # characters of page text carried in an event
MAX_LINKS = 100
CONCURRENCY = 4
HEADERS = {"User-Agent": "agentsched-scraper-agent/0.1"}


async def fetch(client: httpx.AsyncClient, url: str) -> Page:
    """GET `url` and extract it; raises for non-2xx answers and non-HTML bodies."""
    response = await client.get(url)
    response.raise_for_status()
    content_type = response.headers.get("content-type", "")
    if "html" not in content_type:
        raise ValueError(f"{url} is not HTML ({content_type or 'no content-type'})")
    return extract(str(response.url), response.text)


def save(page: Page) -> dict[str, Any]:
    """Store the page under `pages/<sha1 of url>.json` and return the stored record."""
    record = {
        "url": page.url,
        "title": page.title,
        "text": page.text[:MAX_TEXT],
        "links": page.links[:MAX_LINKS],
        "fetched_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    folder = config.data_dir() / "pages"
    folder.mkdir(exist_ok=True)
    target = folder / f"{hashlib.sha1(page.url.encode()).hexdigest()}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(target)  # atomic: the API never reads half a file
    return record


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=15.0, follow_redirects=True, headers=HEADERS)


@task(name="scraper.fetch_page", timeout=60, max_retries=2, retry_backoff=2.0)
async def fetch_page(url: str) -> dict[str, Any]:
    """Fetch one page, store it and publish `scraper.page_fetched`."""
    async with _client() as client, EventBus() as bus:
        record = save(await fetch(client, url))
        await bus.publish("scraper.page_fetched", payload=record)
    log.info("fetched %s (%d chars, %d links)", url, len(record["text"]), len(record["links"]))
    return {"url": record["url"], "title": record["title"], "links": len(record["links"])}


@task(name="scraper.crawl", timeout=600)
async def crawl(seeds: list[str] | None = None, max_pages: int | None = None) -> dict[str, Any]:
    """Breadth-first crawl from `seeds` (default: SCRAPER_SEEDS), staying on their hosts.

    Fetches up to `max_pages` pages, `CONCURRENCY` at a time, publishing each one, then
    publishes `scraper.crawl_finished` with the counts.
    """
    start = seeds or config.seeds()
    limit = max_pages or config.max_pages()
    hosts = {urlsplit(u).netloc for u in start}
    queue, seen = deque(start), set(start)
    fetched: list[str] = []
    errors: list[str] = []
    async with _client() as client, EventBus() as bus:
        while queue and len(fetched) + len(errors) < limit:
            room = limit - len(fetched) - len(errors)
            batch = [queue.popleft() for _ in range(min(CONCURRENCY, len(queue), room))]
            pages = await asyncio.gather(*(fetch(client, u) for u in batch), return_exceptions=True)
            for url, page in zip(batch, pages, strict=True):
                if isinstance(page, BaseException):
                    errors.append(f"{url}: {type(page).__name__}: {page}"[:300])
                    continue
                await bus.publish("scraper.page_fetched", payload=save(page))
                fetched.append(page.url)
                for link in page.links:
                    if link not in seen and urlsplit(link).netloc in hosts:
                        seen.add(link)
                        queue.append(link)
        summary = {"seeds": start, "pages": len(fetched), "errors": errors[:10]}
        await bus.publish("scraper.crawl_finished", payload=summary)
    log.info("crawl from %s: %d page(s), %d error(s)", start, len(fetched), len(errors))
    return {**summary, "urls": fetched}
