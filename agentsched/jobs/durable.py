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
import contextlib
from typing import Any

from agentsched.db.executions import ExecutionStore
from agentsched.execution import Execution, snapshot_row
from agentsched.jobs.batch import queued_fields


def queued_row(execution: Execution, due_ms: int) -> dict[str, Any]:
    """The `task_executions` row the enqueue script's first snapshot (seq 1) describes
    (its `enqueued_at` is the execution's; `due_ms` stands in when it has none)."""
    return snapshot_row(queued_fields(execution, due_ms))


class GroupCommit:
    """Writes rows to SQL, many callers per commit; `write` returns once committed.

    A caller says `expect()` before its Redis step and then either `write(row)` or
    `forget()`. A commit about to start waits (at most `GATHER_S`) for the rows of
    callers still in their Redis step: concurrent enqueues resume together after a
    commit, and without the wait the first of them would commit alone.
    """

    GATHER_S = 0.002

    def __init__(self, store: ExecutionStore) -> None:
        self.store = store
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._expected = 0
        self._all_in = asyncio.Event()

    def expect(self) -> None:
        self._expected += 1
        self._all_in.clear()

    def forget(self) -> None:
        self._expected -= 1
        if self._expected <= 0:
            self._expected = 0
            self._all_in.set()

    async def write(self, row: dict[str, Any]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((row, done))
        self.forget()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._commit_all())
        await asyncio.shield(done)

    async def _commit_all(self) -> None:
        while self._waiting:
            if self._expected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.GATHER_S):
                        await self._all_in.wait()
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
