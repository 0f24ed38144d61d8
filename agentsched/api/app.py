"""`create_app`: a FastAPI app serving only the scheduler API, for one agentsched app.

Served on its own with `uvicorn agentsched.api:create_app --factory`, configured by
the `AGENTSCHED_*` environment.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from agentsched.api.docs import add_offline_docs
from agentsched.api.errors import install_error_handlers
from agentsched.api.lifespan import scheduler_lifespan
from agentsched.api.router import scheduler_router
from agentsched.settings import Settings, get_settings

API_PREFIX = "/api/scheduler"


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
            self.openapi_schema = schema
        return self.openapi_schema


def create_app(
    settings: Settings | None = None, *, tasks_files: Sequence[str] | None = None
) -> FastAPI:
    """A FastAPI app with `scheduler_router` at `/api/scheduler` and its lifespan.

    `settings` default to the `AGENTSCHED_*` environment, read now (so a bad value
    stops the factory with one `ConfigError` line); `tasks_files` defaults to
    `settings.tasks_file`. OpenAPI is served at `/openapi.json`, docs at `/docs` and
    `/redoc` (from packaged assets, so they work offline), the dashboard at
    `/api/scheduler/ui/`, where `/` redirects.
    """
    settings = settings or get_settings()
    app = SchedulerApp(
        settings,
        title=f"agentsched: {settings.app}",
        version=_version(),
        description=(
            "Schedules, executions and registered task functions of the agentsched app "
            f"`{settings.app}`. When AGENTSCHED_API_KEY is set every call needs `X-API-Key`."
        ),
        lifespan=scheduler_lifespan(settings, tasks_files=tasks_files),
        docs_url=None,  # served below from packaged assets: FastAPI's load from a CDN
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(scheduler_router, prefix=API_PREFIX)
    add_offline_docs(app, assets=f"{API_PREFIX}/ui/vendor")
    app.add_api_route("/", _to_dashboard, methods=["GET"], include_in_schema=False)
    return app


async def _to_dashboard() -> RedirectResponse:
    return RedirectResponse(f"{API_PREFIX}/ui/", status_code=307)
