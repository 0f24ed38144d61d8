"""Enqueueing an execution again, for **Retry** and **Run again**: the one rule the router
and the CLI share.

A retry is only of a `failed` or `cancelled` execution (`Conflict` otherwise); run again
takes any. The new execution has the old one's function, arguments and metadata, plus
`retry_of` / `run_again_of` naming it, but not its trace context (`traceparent`,
`tracestate`): the new run belongs to the trace of whoever asked for it, not to the old
run's, which has ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentsched.errors import Conflict
from agentsched.observability.tracing import CARRIER_KEYS
from agentsched.status import TaskStatus

if TYPE_CHECKING:
    from agentsched.execution import Execution
    from agentsched.jobs.queue import TaskQueue

RETRYABLE = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})


async def enqueue_again(queue: TaskQueue, execution_id: str, *, retry: bool) -> Execution:
    """Enqueue execution `execution_id` of `queue`'s app again: a retry when `retry`."""
    old = await queue.get_execution(execution_id)
    if retry and old.status not in RETRYABLE:
        raise Conflict(
            f"execution {old.id} is {old.status.value}: only failed or cancelled ones retry "
            "(run again takes any)"
        )
    metadata = {k: v for k, v in old.metadata.items() if k not in CARRIER_KEYS}
    metadata["retry_of" if retry else "run_again_of"] = old.id
    return await queue.enqueue(old.function, old.args, old.kwargs, metadata=metadata)
