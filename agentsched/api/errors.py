"""The one mapping from agentsched errors to HTTP responses.

Library code raises the hierarchy of `agentsched.errors` and never `HTTPException`;
`error_response` turns each branch into one status and body:

=====================================  ======  ==========================================
exception                              status  body
=====================================  ======  ==========================================
`InvalidInput` (and subclasses)        422     ``{"detail": [{"loc": [..., field],
                                               "msg": message, "type": kind}]}``
`Unauthorized`                         401     ``{"detail": message, "type": kind}``
`NotFound`                             404     same
`Conflict`, `AlreadyFinished`          409     same
`PayloadTooLarge`                      413     same
`ServiceUnavailable`, `NotStarted`,    503     same, with a generic message
`TooManyStreams`, Redis / database
connection errors
=====================================  ======  ==========================================

The 422 body has the shape of FastAPI's own validation errors, so a client reads one
shape whether pydantic or the library rejected the value. `AgentschedRoute` (see
`deps.py`) applies the mapping inside every route of `scheduler_router`, so it holds
in any app that mounts the router; `install_error_handlers` registers the same mapping
as app-wide exception handlers for apps built by `create_app`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from agentsched.connections import is_transient
from agentsched.errors import (
    AgentschedError,
    Conflict,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
)

log = logging.getLogger("agentsched.api")


class ApiError(AgentschedError):
    """An error of the HTTP layer itself (not of the library)."""


class NotStarted(ApiError):
    """The app mounts the router but never ran `scheduler_lifespan` / `agentsched_context`."""

    def __init__(self) -> None:
        super().__init__(
            "agentsched is not started in this app: use FastAPI(lifespan=scheduler_lifespan())"
            " or 'async with agentsched_context(app)' in your own lifespan"
        )


class Unauthorized(ApiError):
    """`AGENTSCHED_API_KEY` is set and the request has no matching `X-API-Key` header."""

    def __init__(self) -> None:
        super().__init__("missing or invalid X-API-Key header")


class PayloadTooLarge(ApiError):
    """The request body is larger than `AGENTSCHED_MAX_BODY_BYTES`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"request body larger than {limit} bytes")


class TooManyStreams(ApiError):
    """`AGENTSCHED_MAX_EVENT_STREAMS` event streams are already open in this process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"{limit} event streams are open in this process (AGENTSCHED_MAX_EVENT_STREAMS);"
            " retry later"
        )


class ErrorBody(BaseModel):
    """Body of every error response except 422."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "schedule 'x' not found", "type": "not_found"}]}
    )

    detail: str
    type: str


# Connection failures in the middle of a request are the service's fault, not the user's.
_UNAVAILABLE: tuple[type[Exception], ...] = (
    ServiceUnavailable,
    NotStarted,
    TooManyStreams,
    RedisConnectionError,
    RedisTimeoutError,
    OperationalError,
    InterfaceError,
    PoolTimeout,
    ConnectionError,
)
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (Unauthorized, 401),
    (NotFound, 404),
    (Conflict, 409),
    (PayloadTooLarge, 413),
    *((kind, 503) for kind in _UNAVAILABLE),
)


# SQLSTATE classes that mean "the database cannot serve us now": connection exception,
# insufficient resources, operator intervention, database does not exist.
_DOWN_SQLSTATES = ("08", "53", "57", "3D")


def _database_down(exc: BaseException) -> bool:
    # asyncpg's connect-time failures reach SQLAlchemy as a bare DBAPIError; a data
    # error (say, a NUL byte) is a bare DBAPIError too, and is no outage.
    if type(exc) is not DBAPIError:
        return False
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    return exc.connection_invalidated or sqlstate[:2] in _DOWN_SQLSTATES or not sqlstate


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _kind(exc: BaseException) -> str:
    return _CAMEL.sub("_", type(exc).__name__).lower()


def status_for(exc: BaseException) -> int | None:
    """The HTTP status of an exception, or None when it is not an expected error (a bug)."""
    if isinstance(exc, InvalidInput):
        return 422
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    # A Redis that is loading, read-only after a failover, out of memory or without
    # its primary is unavailable too (after the client's bounded retries).
    return 503 if _database_down(exc) or is_transient(exc) else None


def _validation_response(exc: RequestValidationError) -> Response:
    # FastAPI's own handler echoes each rejected `input`: megabytes for a big body, and
    # a 500 when it holds a NaN. The location, message and type are what a client needs.
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type"))}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


def _malformed_body() -> Response:
    error = {"loc": ["body"], "msg": "the body is not valid UTF-8 JSON", "type": "json_invalid"}
    return JSONResponse({"detail": [error]}, status_code=422)


def error_response(exc: BaseException, request: Request | None = None) -> Response | None:
    """The response for `exc`, or None to let it propagate (an unexpected error)."""
    if isinstance(exc, RequestValidationError):
        return _validation_response(exc)
    if isinstance(exc, HTTPException) and exc.status_code == 400 and exc.__cause__ is not None:
        # FastAPI's "error parsing the body" (bad UTF-8, nesting too deep for the parser):
        # malformed JSON like any other, so the same 422 as a JSON syntax error.
        return _malformed_body()
    status = status_for(exc)
    if status is None:
        return None
    if isinstance(exc, InvalidInput):
        where = (
            "body" if request is not None and request.method in {"POST", "PATCH", "PUT"} else None
        )
        loc: list[str] = [where, exc.field] if where else [exc.field]
        body: dict[str, Any] = {"detail": [{"loc": loc, "msg": exc.message, "type": _kind(exc)}]}
        return JSONResponse(body, status_code=422)
    if status == 503:
        # Internals of a connection error (hosts, passwords) stay in the log.
        log.warning("service unavailable: %s: %s", type(exc).__name__, exc)
        message = (
            str(exc) if isinstance(exc, AgentschedError) else "Redis or the database is unavailable"
        )
        return JSONResponse({"detail": message, "type": "service_unavailable"}, status_code=503)
    headers = {"WWW-Authenticate": "APIKey"} if status == 401 else None
    return JSONResponse(
        {"detail": str(exc), "type": _kind(exc)}, status_code=status, headers=headers
    )


async def _handle(request: Request, exc: Exception) -> Response:
    response = error_response(exc, request)
    if response is None:  # a DBAPIError subclass: a bug, not the user's fault
        raise exc
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping as exception handlers of `app` (done by `create_app`)."""
    app.add_exception_handler(AgentschedError, _handle)
    infrastructure: list[type[Exception]] = [*_UNAVAILABLE, DBAPIError]
    for kind in infrastructure:
        if not issubclass(kind, AgentschedError):
            app.add_exception_handler(kind, _handle)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the given error statuses."""
    described = {
        401: "X-API-Key missing or wrong (only when AGENTSCHED_API_KEY is set)",
        404: "No such id for this app (also: not a uuid, or another app's id)",
        409: "Conflicts with the current state",
        413: "Request body larger than AGENTSCHED_MAX_BODY_BYTES",
        503: "Redis or the database is unavailable",
    }
    return {s: {"model": ErrorBody, "description": described[s]} for s in statuses}
