"""Durable enqueue: the execution row committed in SQL before `enqueue` returns.

By default `enqueue` returns once Redis has the job and the recorder writes the row a
moment later; a Redis without persistence that dies in that moment loses an
acknowledged job even from the history. In durable mode the caller also waits for
its row to be committed. Rows of concurrent enqueues share one commit: while one
commit runs, the next callers' rows gather, and go together in the following one.
Once the row is in SQL, the reconciler guarantees the job reaches Redis.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agentsched.db.executions import ExecutionStore
from agentsched.execution import Execution, RawJSON
from agentsched.serialization import dumps_str, from_ms


def queued_row(execution: Execution, due_ms: int) -> dict[str, Any]:
    """The `task_executions` row the enqueue script's first snapshot (seq 1) describes."""
    return {
        "id": execution.id,
        "task_id": execution.task_id,
        "app": execution.app,
        "function": execution.function,
        "status": "queued",
        "args": RawJSON(dumps_str(execution.args)),
        "kwargs": RawJSON(dumps_str(execution.kwargs)),
        "result": None,
        "error": None,
        "error_kind": None,
        "attempt": 1,
        "max_tries": execution.max_tries,
        "scheduled_for": execution.scheduled_for,
        "enqueued_at": execution.enqueued_at,
        "started_at": None,
        "finished_at": None,
        "meta": RawJSON(dumps_str(execution.metadata)),
        "seq": 1,
        "progress": None,
        "progress_message": None,
        "due_at": from_ms(due_ms),
    }


class GroupCommit:
    """Writes rows to SQL, many callers per commit; `write` returns once committed."""

    def __init__(self, store: ExecutionStore) -> None:
        self.store = store
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(self, row: dict[str, Any]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((row, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._commit_all())
        await asyncio.shield(done)

    async def _commit_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                # A newer snapshot the recorder wrote first wins (upserts compare seq).
                await self.store.upsert_many([row for row, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
