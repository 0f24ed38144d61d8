"""`/tasks`: create, read, update, delete, toggle and run schedules of this app.

Schedules created here have `source: api` and are never touched by a tasks-file
reload. Every id is looked up within the app, so another app's ids are 404.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Annotated, Literal

from fastapi import Query, Request, Response, status

from agentsched.api.deps import State, router_path
from agentsched.api.deps import scheduler_router as router
from agentsched.api.errors import error_responses
from agentsched.api.models import FUNCTION_PATTERN, ExecutionRead, Page
from agentsched.api.models_tasks import TaskCreate, TaskRead, TaskUpdate
from agentsched.api.routes_executions import EXECUTION_LINKS
from agentsched.db.schedules import SORTABLE

TAGS: list[str | Enum] = ["tasks"]
_NOT_FOUND = error_responses(401, 404, 503)
# OpenAPI links from a created schedule to the operations on its id.
_BY_ID = {"task_id": "$response.body#/id"}
TASK_LINKS = {
    f"{verb.title()}Task": {"operationId": f"{verb}_task", "parameters": _BY_ID}
    for verb in ("get", "update", "delete", "run", "enable", "disable")
}


class TaskSort(StrEnum):
    """Columns schedules can be sorted by (an allow-list)."""

    NAME = "name"
    FUNCTION = "function"
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"
    NEXT_RUN_AT = "next_run_at"
    LAST_RUN_AT = "last_run_at"


if {s.value for s in TaskSort} != set(SORTABLE):  # pragma: no cover
    raise RuntimeError("TaskSort is out of sync with db.schedules.SORTABLE")


@router.get(
    "/tasks",
    tags=TAGS,
    operation_id="list_tasks",
    summary="The schedules of this app",
    responses=error_responses(401, 503),
)
async def list_tasks(
    state: State,
    enabled: Annotated[bool | None, Query()] = None,
    source: Annotated[Literal["yaml", "api"] | None, Query()] = None,
    function: Annotated[
        str | None, Query(max_length=512, pattern=FUNCTION_PATTERN, description="A task name")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    sort: Annotated[TaskSort, Query()] = TaskSort.NAME,
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
) -> Page[TaskRead]:
    """A page of schedules, by name unless `sort` says otherwise."""
    items, total = await state.scheduler.list(
        enabled=enabled, source=source, function=function, limit=limit, offset=offset,
        sort=sort.value, descending=order == "desc",
    )  # fmt: skip
    return Page[TaskRead](
        items=[TaskRead.of(s) for s in items], total=total, limit=limit, offset=offset
    )


@router.post(
    "/tasks",
    tags=TAGS,
    status_code=status.HTTP_201_CREATED,
    operation_id="create_task",
    summary="Create a schedule",
    responses={201: {"links": TASK_LINKS}, **error_responses(401, 409, 413, 503)},
)
async def create_task(
    body: TaskCreate, state: State, request: Request, response: Response
) -> TaskRead:
    """Create a cron or interval schedule of a registered function (201).

    409 when the app already has a schedule of that name; 422 names the field of a
    bad cron, interval, timezone or an unregistered function.
    """
    schedule = await state.scheduler.create(body.model_dump(exclude_unset=True), source="api")
    response.headers["Location"] = router_path(request, "/tasks", f"/tasks/{schedule.id}")
    return TaskRead.of(schedule)


@router.get(
    "/tasks/{task_id}",
    tags=TAGS,
    operation_id="get_task",
    summary="One schedule",
    responses=_NOT_FOUND,
)
async def get_task(task_id: str, state: State) -> TaskRead:
    """The schedule (404 for unknown ids and other apps' ids)."""
    return TaskRead.of(await state.scheduler.get(task_id))


@router.patch(
    "/tasks/{task_id}",
    tags=TAGS,
    operation_id="update_task",
    summary="Update a schedule (merge-patch)",
    responses=error_responses(401, 404, 409, 413, 503),
)
async def update_task(task_id: str, body: TaskUpdate, state: State) -> TaskRead:
    """Change the fields sent; `null` clears `cron`, `interval`, `description`.

    The result must still be a valid schedule (exactly one of cron / interval), else 422.
    """
    return TaskRead.of(await state.scheduler.update(task_id, body.patch()))


@router.delete(
    "/tasks/{task_id}",
    tags=TAGS,
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    operation_id="delete_task",
    summary="Delete a schedule",
    responses=_NOT_FOUND,
)
async def delete_task(task_id: str, state: State) -> None:
    """Delete it (204); its past executions stay in the history."""
    await state.scheduler.delete(task_id)


@router.post(
    "/tasks/{task_id}/enable",
    tags=TAGS,
    operation_id="enable_task",
    summary="Enable a schedule",
    responses=_NOT_FOUND,
)
async def enable_task(task_id: str, state: State) -> TaskRead:
    """Enable it; the next fire time is computed from now."""
    return TaskRead.of(await state.scheduler.enable(task_id))


@router.post(
    "/tasks/{task_id}/disable",
    tags=TAGS,
    operation_id="disable_task",
    summary="Disable a schedule",
    responses=_NOT_FOUND,
)
async def disable_task(task_id: str, state: State) -> TaskRead:
    """Disable it: no fire time is enqueued until it is enabled again."""
    return TaskRead.of(await state.scheduler.disable(task_id))


@router.post(
    "/tasks/{task_id}/run",
    tags=TAGS,
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="run_task",
    summary="Run a schedule now",
    responses={202: {"links": EXECUTION_LINKS}, **error_responses(401, 404, 409, 503)},
)
async def run_task(
    task_id: str, state: State, request: Request, response: Response
) -> ExecutionRead:
    """Enqueue the schedule's function with its args now (202 with the execution).

    The schedule's own fire times are not changed.
    """
    execution = await state.scheduler.run_now(task_id)
    response.headers["Location"] = router_path(request, "/tasks", f"/executions/{execution.id}")
    return ExecutionRead.of(execution)
