"""`create_app`: a FastAPI app serving only the scheduler API, for one agentsched app;
`scheduler_app`: the same furnishings for an app with routes and a lifespan of its own.

`create_app` is served on its own with `uvicorn agentsched.api:create_app --factory`,
configured by the `AGENTSCHED_*` environment.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.types import Message, Receive, Scope, Send

from agentsched.api.docs import add_offline_docs
from agentsched.api.errors import install_error_handlers
from agentsched.api.lifespan import scheduler_lifespan
from agentsched.api.router import scheduler_router
from agentsched.errors import ConfigError, InvalidInput
from agentsched.registry import registered
from agentsched.settings import Settings, get_settings

API_PREFIX = "/api/scheduler"
Lifespan = Callable[[Any], AbstractAsyncContextManager[None]]


def _version() -> str:
    try:
        return version("agentsched")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


class SchedulerApp(FastAPI):
    """The FastAPI app of `create_app`: its OpenAPI states whether the API key is required."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.agentsched_settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = self._full_allow(scope, send)
        await super().__call__(scope, receive, send)

    def _full_allow(self, scope: Scope, send: Send) -> Send:
        """`send`, with a 405's `Allow` naming every method of the path, not one route's."""

        async def send_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                methods = self._methods_of(scope["path"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                headers.append((b"allow", ", ".join(sorted(methods)).encode()))
                message = {**message, "headers": headers}
            await send(message)

        return send_allow

    def _methods_of(self, path: str) -> set[str]:
        # From the schema's paths: the public description of the routes, whatever way
        # FastAPI nests included routers inside.
        methods: set[str] = set()
        for template, operations in self.openapi().get("paths", {}).items():
            pattern = re.sub(r"\\{[^/]+\\}", "[^/]+", re.escape(template))
            if re.fullmatch(pattern, path):
                methods |= {method.upper() for method in operations}
        return methods | ({"HEAD"} if "GET" in methods else set())

    def openapi(self) -> dict[str, Any]:
        """The schema, with `X-API-Key` required when a key is set and absent otherwise."""
        if self.openapi_schema is None:
            schema = super().openapi()
            keyed = self.agentsched_settings.api_key is not None
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    security = operation.pop("security", None)
                    if keyed and security:
                        operation["security"] = [s for s in security if s]
            if not keyed:
                schema.get("components", {}).pop("securitySchemes", None)
            _fit_examples(schema.get("components", {}).get("schemas", {}))
            self.openapi_schema = schema
        return self.openapi_schema


def _fit_examples(schemas: dict[str, Any]) -> None:
    """Request examples that this process would accept: each names a registered function
    whose signature binds the example's arguments; an example no function fits is dropped
    (the server must not reject its own examples)."""
    tasks = registered()
    for name in ("ExecutionCreate", "TaskCreate"):
        model = schemas.get(name, {})
        fitted = []
        for example in model.get("examples", []):
            for definition in tasks.values():
                try:
                    definition.check_arguments(example.get("args", []), example.get("kwargs", {}))
                except InvalidInput:
                    continue
                fitted.append({**example, "function": definition.name})
                break
        if fitted:
            model["examples"] = fitted
        else:
            model.pop("examples", None)


def create_app(
    settings: Settings | None = None, *, tasks_files: Sequence[str] | None = None
) -> FastAPI:
    """A FastAPI app with `scheduler_router` at `/api/scheduler` and its lifespan.

    `settings` default to the `AGENTSCHED_*` environment, read now: a bad value prints
    one line naming the variable and exits with status 1; `tasks_files` defaults to
    `settings.tasks_file`. OpenAPI is served at `/openapi.json`, docs at `/docs` and
    `/redoc` (from packaged assets, so they work offline), the dashboard at
    `/api/scheduler/ui/`, where `/` redirects.
    """
    if settings is None:
        try:
            settings = get_settings()
        except ConfigError as exc:  # `uvicorn ... --factory`: one line, not a traceback
            print(f"agentsched: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
    app = SchedulerApp(
        settings,
        title=f"agentsched: {settings.app}",
        version=_version(),
        description=(
            "Schedules, executions and registered task functions of the agentsched app "
            f"`{settings.app}`. When AGENTSCHED_API_KEY is set every call needs `X-API-Key`."
        ),
        lifespan=scheduler_lifespan(settings, tasks_files=tasks_files),
        docs_url=None,  # served by `_furnish` from packaged assets: FastAPI's use a CDN
        redoc_url=None,
    )
    return _furnish(app)


def scheduler_app(title: str, lifespan: Lifespan | None = None, **kwargs: Any) -> FastAPI:
    """A FastAPI app of your own, served as `create_app`'s is: `scheduler_router` at
    `/api/scheduler`, its error handlers, `/docs` and `/redoc` from packaged assets, and
    `/` redirecting to the dashboard at `/api/scheduler/ui/`.

    `lifespan` defaults to `scheduler_lifespan()`; a lifespan of your own nests
    `agentsched_context(app)`. Other keyword arguments go to `FastAPI`. Nothing is read
    from the environment until the app starts.
    """
    app = FastAPI(
        title=title,
        lifespan=lifespan or scheduler_lifespan(),
        docs_url=None,  # served from packaged assets: FastAPI's load from a CDN
        redoc_url=None,
        **kwargs,
    )
    return _furnish(app)


def _furnish(app: FastAPI) -> FastAPI:
    install_error_handlers(app)
    app.include_router(scheduler_router, prefix=API_PREFIX)
    add_offline_docs(app, assets=f"{API_PREFIX}/ui/vendor")
    app.add_api_route("/", _to_dashboard, methods=["GET"], include_in_schema=False)
    return app


async def _to_dashboard() -> RedirectResponse:
    return RedirectResponse(f"{API_PREFIX}/ui/", status_code=307)
