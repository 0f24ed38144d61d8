"""Per-request plumbing of the router: its state, the API key, the body limit, errors.

`AgentschedRoute` is the route class of `scheduler_router`. FastAPI keeps a router's
route class when the router is included in another app, so what it does holds however
the router is mounted: before the body is read it finds the state the lifespan put on
`app.state`, checks `X-API-Key` and enforces `AGENTSCHED_MAX_BODY_BYTES` (the declared
`Content-Length` and the bytes actually streamed, so chunked bodies are caught too);
around the endpoint it maps library errors to HTTP through `errors.error_response`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from starlette.types import Message

from agentsched.api.errors import NotStarted, PayloadTooLarge, Unauthorized, error_response
from agentsched.jobs.queue import TaskQueue
from agentsched.jobs.recorder import Recorder
from agentsched.jobs.runtime import Runtime
from agentsched.scheduling.service import Scheduler
from agentsched.settings import Settings

STATE_ATTR = "agentsched"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# Declares the scheme in the OpenAPI document; the check itself runs in AgentschedRoute
# before the body is read, so a caller without the key never gets the body parsed.
api_key_scheme = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Required on every call when AGENTSCHED_API_KEY is set.",
)


@dataclass(slots=True)
class ApiState:
    """What the lifespan opens for one app, kept on `app.state.agentsched`."""

    settings: Settings
    runtime: Runtime
    queue: TaskQueue
    scheduler: Scheduler
    recorder: Recorder | None = None


def api_state(request: Request) -> ApiState:
    """The state of the app serving `request`; `NotStarted` without the lifespan."""
    state = getattr(request.app.state, STATE_ATTR, None)
    if not isinstance(state, ApiState):
        raise NotStarted()
    return state


async def _state_dependency(request: Request) -> ApiState:
    # async: FastAPI runs a plain-def dependency in a worker thread, per request.
    return api_state(request)


def check_api_key(request: Request, settings: Settings) -> None:
    """`Unauthorized` unless the key is unset or `X-API-Key` matches it."""
    if settings.api_key is None:
        return
    given = request.headers.get("x-api-key", "")
    expected = settings.api_key.get_secret_value()
    if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
        raise Unauthorized()


async def read_limited_body(request: Request, limit: int) -> Request:
    """A request whose body was read here, at most `limit` bytes; `PayloadTooLarge` past it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_large = int(declared) > limit
        except ValueError:
            too_large = False  # servers reject a malformed length before we see it
        if too_large:
            raise PayloadTooLarge(limit)
    if request.method not in _BODY_METHODS:
        return request
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    receive = request.receive
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return Request(request.scope, replay)


def router_path(request: Request, collection: str, path: str) -> str:
    """The URL path of `path` under the router serving `request` (for Location headers).

    `collection` is the first segment of the request's own route ("/tasks",
    "/executions"); what precedes it is wherever the app mounted the router.
    """
    return request.url.path.rsplit(collection, 1)[0] + path


class AgentschedRoute(APIRoute):
    """Route class of `scheduler_router`: state, API key, body limit and error mapping."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                state = api_state(request)
                check_api_key(request, state.settings)
                request = await read_limited_body(request, state.settings.max_body_bytes)
                return await handler(request)
            except Exception as exc:
                response = error_response(exc, request)
                if response is None:
                    raise
                return response

        return guarded


State = Annotated[ApiState, Depends(_state_dependency)]

# Every route module registers on this one router (no nested routers: each level of
# include_router costs route matching on every request). `router.py` exports it.
scheduler_router = APIRouter(
    route_class=AgentschedRoute,
    dependencies=[Security(api_key_scheme)],
)
