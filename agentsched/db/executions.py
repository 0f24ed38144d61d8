"""SQL of `task_executions`: batched upserts from the recorder, reads for the API."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import orjson
from sqlalchemy import delete, func, literal, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentsched.db.held import HeldConnection
from agentsched.db.models import TaskExecution
from agentsched.execution import Execution, RawJSON, from_row
from agentsched.status import TERMINAL

log = logging.getLogger("agentsched.recorder")
_UPDATABLE = [c.name for c in TaskExecution.__table__.columns if c.name != "id"]
_PG_COLUMNS = [c.name for c in TaskExecution.__table__.columns]
# Row dicts use the mapped attribute names (`meta` for the `metadata` column).
_PG_KEYS = [
    TaskExecution.__mapper__.get_property_by_column(c).key for c in TaskExecution.__table__.columns
]
_PG_JSON = {"args", "kwargs", "result", "metadata"}
_PG_UPSERT = (
    f"INSERT INTO task_executions ({', '.join(_PG_COLUMNS)}) VALUES ("
    + ", ".join(
        f"${i}::jsonb" if name in _PG_JSON else f"${i}" for i, name in enumerate(_PG_COLUMNS, 1)
    )
    + ") ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = EXCLUDED.{name}" for name in _PG_COLUMNS if name != "id")
    + " WHERE task_executions.seq < EXCLUDED.seq"
)
# Reads select plain rows labelled with the attribute names `from_row` expects.
_ROW = [getattr(TaskExecution, key).label(key) for key in _PG_KEYS]
SORTABLE: dict[str, Any] = {
    "enqueued_at": TaskExecution.enqueued_at,
    "started_at": TaskExecution.started_at,
    "finished_at": TaskExecution.finished_at,
    "status": TaskExecution.status,
    "function": TaskExecution.function,
}


def _pg_value(name: str, value: Any) -> Any:
    # PostgreSQL stores no NUL character in text or jsonb; history keeps a visible
    # replacement rather than losing the row.
    if value is None:
        return None
    if name in _PG_JSON:
        text = value if isinstance(value, RawJSON) else orjson.dumps(value).decode()
        return text.replace("\\u0000", "\\ufffd")
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


# Core statements bind by column name: the `meta` attribute is the `metadata` column, and
# a row keyed `meta` silently stored the column's default `{}` on SQLite.
_COLUMN_OF = dict(zip(_PG_KEYS, _PG_COLUMNS, strict=True))


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    return {
        _COLUMN_OF.get(k, k): orjson.loads(str(v)) if isinstance(v, RawJSON) else v
        for k, v in row.items()
    }


def _pg_row(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(_pg_value(name, row[key]) for name, key in zip(_PG_COLUMNS, _PG_KEYS, strict=True))


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
        self._held = HeldConnection(engine) if engine.dialect.name == "postgresql" else None

    async def close(self) -> None:
        """Give back the connection held for writes (before the engine is disposed)."""
        if self._held is not None:
            await self._held.close()

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
            await self._write(batch)
        except (IntegrityError, DataError):
            # One row broke a constraint (a fire time recorded twice, or a schedule
            # deleted meanwhile): write the rest one by one so the batch is not lost.
            for row in batch:
                await self._write_one(row)
        return len(batch)

    async def _write_one(self, row: dict[str, Any]) -> None:
        try:
            await self._write([row])
        except DataError as exc:
            log.error("execution %s cannot be recorded: %s", row["id"], exc.orig)
            return
        except IntegrityError:
            if row["task_id"] is None:
                return
            with contextlib.suppress(IntegrityError):
                await self._write([{**row, "task_id": None}])

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        if self.engine.dialect.name != "postgresql":
            async with self.engine.begin() as conn:
                await conn.execute(self._stmt, [_decoded(row) for row in batch])
            return
        # asyncpg's executemany pipelines the whole batch in C; SQLAlchemy's generic
        # path costs more CPU per row than the worker spends running a no-op job.
        values = [_pg_row(row) for row in batch]
        assert self._held is not None
        try:
            await self._held.executemany(_PG_UPSERT, values)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(_PG_UPSERT, None, exc) from exc
        except asyncpg.DataError as exc:
            raise DataError(_PG_UPSERT, None, exc) from exc

    async def prune(self, app: str, before: dt.datetime, *, batch: int = 5_000) -> int:
        """Delete one app's executions that ended before `before`; returns how many.

        Only terminal rows go (queued and running ones stay whatever their age), in
        batches of `batch` rows, each its own short transaction; on PostgreSQL rows
        another worker is deleting are skipped rather than waited for.
        """
        T = TaskExecution
        doomed = (
            select(T.id)
            .where(T.app == app, T.finished_at < before, T.status.in_(sorted(TERMINAL)))
            .limit(batch)
        )
        if self.engine.dialect.name == "postgresql":
            doomed = doomed.with_for_update(skip_locked=True)
        total = 0
        while True:
            async with self.engine.begin() as conn:
                deleted = (await conn.execute(delete(T).where(T.id.in_(doomed)))).rowcount
            total += deleted
            if deleted < batch:
                return total
            await asyncio.sleep(0)  # let the worker's other tasks in between batches

    async def unfinished(
        self, app: str, *, before: dt.datetime, after: tuple[dt.datetime, str] | None, limit: int
    ) -> list[Execution]:
        """One app's queued and running executions enqueued before `before`, oldest first.

        Keyset paging: pass the last row's (enqueued_at, id) as `after` for the next page.
        """
        T = TaskExecution
        where = [T.app == app, T.status.in_(["queued", "running"]), T.enqueued_at < before]
        if after is not None:
            where.append(tuple_(T.enqueued_at, T.id) > tuple_(*after))
        query = select(*_ROW).where(*where).order_by(T.enqueued_at, T.id).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [from_row(r) for r in rows]

    async def settle(
        self,
        execution_id: str,
        *,
        status: str,
        result: str | None,
        error: str | None,
        error_kind: str | None,
        attempt: int | None = None,
    ) -> bool:
        """Record an end Redis could not take (it had forgotten the execution).

        Only a queued or running row changes; its seq moves past any snapshot still on
        its way. Returns whether a row changed.
        """
        T = TaskExecution
        values: dict[str, Any] = {
            "status": status,
            "result": None if result is None else orjson.loads(str(result)),
            "error": error or None,
            "error_kind": error_kind or None,
            "seq": T.seq + 1,
        }
        if status in TERMINAL:
            values["finished_at"] = dt.datetime.now(dt.UTC)
        if attempt is not None:
            values["attempt"] = attempt
        stmt = (
            update(T)
            .where(T.id == execution_id, T.status.in_(["queued", "running"]))
            .values(**values)
        )
        async with self.engine.begin() as conn:
            changed = (await conn.execute(stmt)).rowcount
        return bool(changed)

    async def get(self, app: str, execution_id: str) -> Execution | None:
        query = select(*_ROW).where(TaskExecution.id == execution_id, TaskExecution.app == app)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
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
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        id_prefix: str | None = None,
        after: tuple[dt.datetime, str] | None = None,
    ) -> tuple[list[Execution], int]:
        """A page of one app's executions (newest first by default) and the total count.

        `since` / `until` bound `enqueued_at`; `id_prefix` matches the start of the id.
        `after` is a keyset position `(enqueued_at, id)` of the last row of the previous
        page (sort `enqueued_at` only): the page starts there through the index however
        deep it is, where `offset` walks every row it skips. `total` ignores `after`.
        """
        T = TaskExecution
        where = [T.app == app]
        if since is not None:
            where.append(T.enqueued_at >= since)
        if until is not None:
            where.append(T.enqueued_at < until)
        if id_prefix:
            # The range lets the primary key's index find the candidates (LIKE cannot use
            # it outside the C collation); ids are lower-case hex and "-", all below "g".
            escaped = id_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where += [T.id >= id_prefix, T.id < id_prefix + "g"]
            where.append(T.id.like(escaped + "%", escape="\\"))
        statuses = list(status)
        if statuses:
            where.append(TaskExecution.status.in_(statuses))
        if task_id is not None:
            where.append(TaskExecution.task_id == task_id)
        if function is not None:
            where.append(TaskExecution.function == function)
        column = SORTABLE[sort]
        keyset: list[Any] = []
        if after is not None:
            position = tuple_(T.enqueued_at, T.id)
            mark = tuple_(literal(after[0], T.enqueued_at.type), literal(after[1], T.id.type))
            keyset.append(position < mark if descending else position > mark)
            # The same bound on the indexed column alone, which the planner can seek to.
            stamp = literal(after[0], T.enqueued_at.type)
            keyset.append(T.enqueued_at <= stamp if descending else T.enqueued_at >= stamp)
        query = (
            select(*_ROW)
            .where(*where, *keyset)
            .order_by(
                column.desc() if descending else column.asc(),
                T.id.desc() if descending else T.id.asc(),
            )
            .limit(limit)
            .offset(offset)
        )
        async with self.engine.connect() as conn:
            # The page and its total from one snapshot, while recorders write (pysqlite
            # would run each SELECT in a transaction of its own: a page empty, total 1).
            if self.engine.dialect.name == "postgresql":
                await conn.execution_options(isolation_level="REPEATABLE READ")
            elif self.engine.dialect.name == "sqlite":
                await conn.exec_driver_sql("BEGIN")
            rows = (await conn.execute(query)).all()
            total = await conn.scalar(select(func.count()).select_from(TaskExecution).where(*where))
        return [from_row(r) for r in rows], int(total or 0)
