"""`scheduler_router`: every endpoint of the scheduler API, to mount under any prefix.

    app.include_router(scheduler_router, prefix="/api/scheduler")

The app must also run `scheduler_lifespan()` (or `agentsched_context`), which opens
the connections the routes use. All routes use `AgentschedRoute`, so the API key,
the body limit and the error mapping hold in any app that mounts the router. The
route modules register on the router when imported here.
"""

from __future__ import annotations

from fastapi.routing import APIRoute

from agentsched.api import (
    routes_dashboard,
    routes_events,
    routes_executions,
    routes_metrics,
    routes_system,
    routes_tasks,
    routes_ui,
)
from agentsched.api.deps import scheduler_router

__all__ = ["scheduler_router"]
ROUTE_MODULES = (
    routes_tasks, routes_executions, routes_system, routes_events, routes_metrics,
    routes_dashboard, routes_ui,
)  # fmt: skip

for _route in scheduler_router.routes:
    # The key is needed only when AGENTSCHED_API_KEY is set: `{}` as an alternative
    # security requirement says so in the schema (create_app states it exactly).
    if isinstance(_route, APIRoute) and "security" not in (_route.openapi_extra or {}):
        _route.openapi_extra = {**(_route.openapi_extra or {}), "security": [{}]}
