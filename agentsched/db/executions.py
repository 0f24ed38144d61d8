"""SQL of `task_executions`: batched upserts from the recorder, reads for the API."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from agentsched.db.models import TaskExecution
from agentsched.records import Execution, from_row

_UPDATABLE = [c.name for c in TaskExecution.__table__.columns if c.name != "id"]
SORTABLE: dict[str, Any] = {
    "enqueued_at": TaskExecution.enqueued_at,
    "started_at": TaskExecution.started_at,
    "finished_at": TaskExecution.finished_at,
    "status": TaskExecution.status,
    "function": TaskExecution.function,
}


def _upsert(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(TaskExecution)
    excluded = stmt.excluded
    # Snapshots can arrive out of order from several recorders: only a newer one
    # (higher seq) replaces a row, so a terminal row never changes again.
    return stmt.on_conflict_do_update(
        index_elements=[TaskExecution.id],
        set_={name: excluded[name] for name in _UPDATABLE},
        where=TaskExecution.seq < excluded.seq,
    )


class ExecutionStore:
    """Reads and batched writes of execution history."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._stmt = _upsert(engine.dialect.name)

    async def upsert_many(self, rows: Sequence[dict[str, Any]]) -> int:
        """Write snapshots (newest per id wins); returns how many rows were sent."""
        latest: dict[str, dict[str, Any]] = {}
        for row in rows:
            seen = latest.get(row["id"])
            if seen is None or seen["seq"] < row["seq"]:
                latest[row["id"]] = row
        batch = list(latest.values())
        if not batch:
            return 0
        try:
            async with self.engine.begin() as conn:
                await conn.execute(self._stmt, batch)
        except IntegrityError:
            # One row broke a constraint (a fire time recorded twice under another id):
            # write the rest one by one so the batch is not lost for it.
            for row in batch:
                try:
                    async with self.engine.begin() as conn:
                        await conn.execute(self._stmt, [row])
                except IntegrityError:
                    continue
        return len(batch)

    async def get(self, app: str, execution_id: str) -> Execution | None:
        async with AsyncSession(self.engine) as session:
            row = await session.scalar(
                select(TaskExecution).where(
                    TaskExecution.id == execution_id, TaskExecution.app == app
                )
            )
        return from_row(row) if row is not None else None

    async def list(
        self,
        app: str,
        *,
        status: Iterable[str] = (),
        task_id: str | None = None,
        function: str | None = None,
        limit: int = 50,
        offset: int = 0,
        sort: str = "enqueued_at",
        descending: bool = True,
    ) -> tuple[list[Execution], int]:
        """A page of one app's executions (newest first by default) and the total count."""
        where = [TaskExecution.app == app]
        statuses = list(status)
        if statuses:
            where.append(TaskExecution.status.in_(statuses))
        if task_id is not None:
            where.append(TaskExecution.task_id == task_id)
        if function is not None:
            where.append(TaskExecution.function == function)
        column = SORTABLE[sort]
        query = (
            select(TaskExecution)
            .where(*where)
            .order_by(column.desc() if descending else column.asc(), TaskExecution.id.desc())
            .limit(limit)
            .offset(offset)
        )
        async with AsyncSession(self.engine) as session:
            rows = (await session.scalars(query)).all()
            total = await session.scalar(
                select(func.count()).select_from(TaskExecution).where(*where)
            )
        return [from_row(r) for r in rows], int(total or 0)
