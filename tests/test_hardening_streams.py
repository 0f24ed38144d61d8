"""Open event streams are capped per process: one more is a JSON 503, and a closed
stream frees its slot (a client with the key cannot use up Redis's connections)."""

from __future__ import annotations

import httpx

from agentsched.api import create_app, routes_events
from agentsched.settings import Settings
from tests.test_api_events import serving, stream
from tests.test_api_support import eventually


async def _open_streams() -> int:
    return routes_events._open


async def test_streams_over_the_cap_get_a_json_503(settings: Settings) -> None:
    capped = settings.model_copy(update={"max_event_streams": 2})
    async with serving(create_app(capped, tasks_files=[])) as url:
        async with stream(url), stream(url):
            async with httpx.AsyncClient(timeout=10) as client:
                refused = await client.get(url)
            assert refused.status_code == 503
            assert refused.headers["content-type"] == "application/json"
            body = refused.json()
            assert body["type"] == "service_unavailable"
            assert "AGENTSCHED_MAX_EVENT_STREAMS" in body["detail"]
        # Both closed: their slots are freed once the server sees the disconnects.
        await eventually(_open_streams, lambda n: n == 0)
        async with stream(url), stream(url):
            assert routes_events._open == 2
    assert routes_events._open == 0
