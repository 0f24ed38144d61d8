"""The REST API of agentsched: a router to mount, its lifespan, and a ready-made app.

    from agentsched.api import scheduler_router, scheduler_lifespan

    app = FastAPI(lifespan=scheduler_lifespan())
    app.include_router(scheduler_router, prefix="/api/scheduler")

`create_app()` builds a FastAPI app with exactly that (`uvicorn agentsched.api:create_app
--factory`), `scheduler_app(title, lifespan)` one to add routes of your own to (both
serve `/docs` offline and redirect `/` to the dashboard). `api_state(request)` gives an
app's own routes the same queue, scheduler and connections. Importing this package
reads no environment and opens no connection.
"""

from __future__ import annotations

from agentsched.api.app import API_PREFIX, create_app, scheduler_app
from agentsched.api.deps import ApiState, api_state
from agentsched.api.errors import error_response, install_error_handlers
from agentsched.api.lifespan import agentsched_context, scheduler_lifespan
from agentsched.api.router import scheduler_router

__all__ = [
    "API_PREFIX",
    "ApiState",
    "agentsched_context",
    "api_state",
    "create_app",
    "error_response",
    "install_error_handlers",
    "scheduler_app",
    "scheduler_lifespan",
    "scheduler_router",
]
