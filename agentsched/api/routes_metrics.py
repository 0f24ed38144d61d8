"""`/metrics`: this process's Prometheus metrics, behind the API key like every route.

Rendered in a worker thread: the queue gauges are read from Redis on the event loop
while the thread waits for them (`agentsched.observability.scrape`). Scrapers that
cannot send `X-API-Key` use `AGENTSCHED_METRICS_PORT` instead, served without it.
"""

from __future__ import annotations

import asyncio

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST

from agentsched.api.deps import State
from agentsched.api.deps import scheduler_router as router
from agentsched.observability import metrics as agentsched_metrics


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    """Prometheus text format of every `agentsched_*` metric of this process."""
    # agentsched's own series written directly (1 ms, not prometheus-client's 12-19 ms
    # for a worker's 2,000 samples), the rest of the registry through prometheus-client.
    body = await asyncio.to_thread(agentsched_metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
