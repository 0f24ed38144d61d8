"""`/executions`: enqueue a registered function, read the history, cancel.

Only names registered with `@task` can run: the queue resolves `function` through the
registry, and nothing from a request is ever imported.
"""

from __future__ import annotations

import datetime as dt
import uuid
from enum import Enum, StrEnum
from typing import Annotated, Literal

from fastapi import Query, Request, Response, status

from agentsched.api.deps import State, router_path
from agentsched.api.deps import scheduler_router as router
from agentsched.api.errors import error_responses
from agentsched.api.models import (
    FUNCTION_PATTERN,
    ExecutionBatchCreate,
    ExecutionBatchRead,
    ExecutionCreate,
    ExecutionRead,
)
from agentsched.api.models_dashboard import ExecutionPage, make_cursor, parse_cursor
from agentsched.db.executions import SORTABLE
from agentsched.errors import AlreadyFinished, Conflict, InvalidInput
from agentsched.status import TaskStatus

TAGS: list[str | Enum] = ["executions"]
ID_PREFIX = r"^[0-9a-fA-F-]+$"
# ISO 8601 with a zone, as a browser's toISOString() writes it (no epoch numbers).
MOMENT = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})$"
# OpenAPI links from a response holding an execution to what can be done with its id
# (clients and schemathesis' stateful run follow them).
EXECUTION_LINKS = {
    name: {"operationId": op, "parameters": {"execution_id": "$response.body#/id"}}
    for name, op in (("GetExecution", "get_execution"), ("CancelExecution", "cancel_execution"))
}


def moment(field: str, value: str | None) -> dt.datetime | None:
    """The datetime of an ISO 8601 query value; `InvalidInput(field)` if it is no date."""
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(field, "is not a date and time") from None


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
    responses={202: {"links": EXECUTION_LINKS}, **error_responses(401, 413, 503)},
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


@router.post(
    "/executions/batch",
    tags=TAGS,
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="enqueue_executions",
    summary="Enqueue many registered task functions at once",
    responses=error_responses(401, 413, 503),
)
async def enqueue_executions(body: ExecutionBatchCreate, state: State) -> ExecutionBatchRead:
    """Queue every item (as `POST /executions` takes it) in one Redis round trip; 202
    with the executions in the same order. One bad item (422 naming `items[i].<field>`)
    queues nothing. With `AGENTSCHED_DURABLE_ENQUEUE`, all rows share one SQL commit.
    """
    executions = await state.queue.enqueue_many(
        item.model_dump(exclude_defaults=True) for item in body.items
    )
    return ExecutionBatchRead(items=[ExecutionRead.of(e) for e in executions])


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
    since: Annotated[
        str | None, Query(pattern=MOMENT, description="Enqueued at or after (ISO 8601, with zone)")
    ] = None,
    until: Annotated[
        str | None, Query(pattern=MOMENT, description="Enqueued before (ISO 8601, with zone)")
    ] = None,
    id_prefix: Annotated[
        str | None,
        Query(min_length=1, max_length=36, pattern=ID_PREFIX, description="Ids starting with this"),
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=80, description="`next_cursor` of the previous page")
    ] = None,
) -> ExecutionPage:
    """A page of executions, newest first by default, as recorded in the database.

    Executions reach the database within tens of milliseconds of each status change.
    Page deep histories with `cursor` (keyset: as fast on the last page as on the first)
    rather than `offset`.
    """
    after = parse_cursor(cursor) if cursor is not None else None
    if after is not None and sort is not ExecutionSort.ENQUEUED_AT:
        raise InvalidInput("cursor", "is only valid with sort=enqueued_at")
    items, total = await state.queue.list_executions(
        status=[s.value for s in status_ or ()],
        task_id=str(task_id) if task_id else None,
        function=function,
        limit=limit,
        offset=offset,
        sort=sort.value,
        descending=order == "desc",
        since=moment("since", since),
        until=moment("until", until),
        id_prefix=id_prefix.lower() if id_prefix else None,
        after=after,
    )
    last = items[-1] if len(items) == limit and sort is ExecutionSort.ENQUEUED_AT else None
    return ExecutionPage(
        items=[ExecutionRead.of(e) for e in items], total=total, limit=limit, offset=offset,
        next_cursor=make_cursor(last.enqueued_at, last.id) if last and last.enqueued_at else None,
    )  # fmt: skip


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
