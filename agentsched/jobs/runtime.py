"""Connections of one process: Redis and the database, opened and closed together.

`Runtime` is the one async context manager that owns them; the queue, the worker,
the scheduler and the API all borrow its clients. Nothing here is global, so nothing
is bound to an event loop at import.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from agentsched.connections import redis_client
from agentsched.db.engine import open_database
from agentsched.db.executions import ExecutionStore
from agentsched.errors import ServiceUnavailable
from agentsched.jobs.tracker import Tracker
from agentsched.settings import Settings, get_settings, mask_url


async def open_redis(
    url: str,
    *,
    retry_seconds: float | None = 5.0,
    first_wait: float = 5.0,
    max_connections: int | None = None,
) -> aioredis.Redis:
    """A connected client; `ServiceUnavailable` naming the masked URL if Redis is down.

    Once open, the client rides out outages for `retry_seconds` (None: forever); the
    first PING waits at most `first_wait`, so a Redis that is down at start-up stops
    the process with one line.
    """
    probe = redis_client(url, retry_seconds=0)
    try:
        async with asyncio.timeout(max(first_wait, 0.1)):
            await probe.ping()
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceUnavailable("Redis", mask_url(url), reason) from None
    finally:
        await probe.aclose()
    return redis_client(
        url, retry_seconds=retry_seconds, health_check_interval=30, max_connections=max_connections
    )


class Runtime:
    """Owns the Redis client and the database engine (or borrows ones passed in)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis: aioredis.Redis | None = None,
        engine: AsyncEngine | None = None,
        retry_forever: bool = False,
    ) -> None:
        self.settings = settings or get_settings()
        # A worker rides out any Redis outage; other processes give up after a while.
        self.retry_seconds = None if retry_forever else self.settings.redis_retry_seconds
        self._redis = redis
        self._engine = engine
        self._own_redis = redis is None
        self._own_engine = engine is None
        self._executions: ExecutionStore | None = None

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("Runtime is not open: use 'async with'")
        return self._redis

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("Runtime is not open: use 'async with'")
        return self._engine

    @property
    def executions(self) -> ExecutionStore:
        if self._executions is None:
            self._executions = ExecutionStore(self.engine)
        return self._executions

    def tracker(self, app: str | None = None) -> Tracker:
        return Tracker(self.redis, self.settings, app)

    async def open(self) -> Self:
        if self._redis is None:
            self._redis = await open_redis(
                self.settings.redis_url,
                retry_seconds=self.retry_seconds,
                first_wait=self.settings.redis_retry_seconds,
                max_connections=self.settings.redis_max_connections,
            )
        if self._engine is None:
            try:
                self._engine = await open_database(self.settings.database_url)
            except BaseException:
                await self.close()
                raise
        return self

    async def close(self) -> None:
        if self._executions is not None:
            await self._executions.close()
            self._executions = None
        if self._engine is not None and self._own_engine:
            await self._engine.dispose()
            self._engine = None
        if self._redis is not None and self._own_redis:
            await self._redis.aclose()
            self._redis = None

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
