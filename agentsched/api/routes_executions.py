"""`/executions`: enqueue a registered function, read the history, cancel.

Only names registered with `@task` can run: the queue resolves `function` through the
registry, and nothing from a request is ever imported.
"""

from __future__ import annotations

import uuid
from enum import Enum, StrEnum
from typing import Annotated, Literal

from fastapi import Query, Request, Response, status

from agentsched.api.deps import State, router_path
from agentsched.api.deps import scheduler_router as router
from agentsched.api.errors import error_responses
from agentsched.api.models import FUNCTION_PATTERN, ExecutionCreate, ExecutionRead, Page
from agentsched.db.executions import SORTABLE
from agentsched.errors import AlreadyFinished, Conflict
from agentsched.status import TaskStatus

TAGS: list[str | Enum] = ["executions"]


class ExecutionSort(StrEnum):
    """Columns the history can be sorted by (an allow-list)."""

    ENQUEUED_AT = "enqueued_at"
    STARTED_AT = "started_at"
    FINISHED_AT = "finished_at"
    STATUS = "status"
    FUNCTION = "function"


if {s.value for s in ExecutionSort} != set(SORTABLE):  # pragma: no cover
    raise RuntimeError("ExecutionSort is out of sync with ExecutionStore.SORTABLE")


@router.post(
    "/executions",
    tags=TAGS,
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="enqueue_execution",
    summary="Enqueue a registered task function",
    responses=error_responses(401, 413, 503),
)
async def enqueue_execution(
    body: ExecutionCreate, state: State, request: Request, response: Response
) -> ExecutionRead:
    """Queue `function` with `args` / `kwargs`; 202 with the execution (status `queued`).

    422 names the field when the function is not registered or a value is not JSON.
    """
    execution = await state.queue.enqueue(
        body.function, body.args, body.kwargs, delay=body.delay, eta=body.eta,
        metadata=body.metadata, idempotency_key=body.idempotency_key,
    )  # fmt: skip
    response.headers["Location"] = router_path(
        request, "/executions", f"/executions/{execution.id}"
    )
    return ExecutionRead.of(execution)


@router.get(
    "/executions",
    tags=TAGS,
    operation_id="list_executions",
    summary="The execution history of this app",
    responses=error_responses(401, 503),
)
async def list_executions(
    state: State,
    status_: Annotated[
        list[TaskStatus] | None,
        Query(alias="status", description="Only these statuses (repeat the parameter)"),
    ] = None,
    task_id: Annotated[uuid.UUID | None, Query(description="Only runs of this schedule")] = None,
    function: Annotated[
        str | None, Query(max_length=512, pattern=FUNCTION_PATTERN, description="A task name")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    sort: Annotated[ExecutionSort, Query()] = ExecutionSort.ENQUEUED_AT,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> Page[ExecutionRead]:
    """A page of executions, newest first by default, as recorded in the database.

    Executions reach the database within tens of milliseconds of each status change.
    """
    items, total = await state.queue.list_executions(
        status=[s.value for s in status_ or ()],
        task_id=str(task_id) if task_id else None,
        function=function,
        limit=limit,
        offset=offset,
        sort=sort.value,
        descending=order == "desc",
    )
    return Page[ExecutionRead](
        items=[ExecutionRead.of(e) for e in items], total=total, limit=limit, offset=offset
    )


@router.get(
    "/executions/{execution_id}",
    tags=TAGS,
    operation_id="get_execution",
    summary="One execution",
    responses=error_responses(401, 404, 503),
)
async def get_execution(execution_id: str, state: State) -> ExecutionRead:
    """The execution's current record (404 for unknown ids and other apps' ids)."""
    return ExecutionRead.of(await state.queue.get_execution(execution_id))


@router.post(
    "/executions/{execution_id}/cancel",
    tags=TAGS,
    operation_id="cancel_execution",
    summary="Cancel a queued or running execution",
    responses=error_responses(401, 404, 409, 413, 503),
)
async def cancel_execution(execution_id: str, state: State) -> ExecutionRead:
    """Cancel it and return the record (status `cancelled`); 409 if it already finished.

    A running execution is stopped by its worker within a poll interval; if no worker
    confirms within a few seconds it is marked cancelled anyway and never retried.
    """
    queue = state.queue
    execution = await queue.get_execution(execution_id)
    if execution.is_terminal:
        raise AlreadyFinished(execution.id, execution.status.value)
    await queue.cancel(execution.id)
    current = await queue.get_execution(execution.id)
    if current.status is TaskStatus.CANCELLED:
        return ExecutionRead.of(current)
    if current.is_terminal:
        raise AlreadyFinished(current.id, current.status.value)
    raise Conflict(f"execution {current.id} could not be cancelled (status {current.status})")
