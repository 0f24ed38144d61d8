"""Write-behind of execution snapshots from Redis to SQL, in batches.

The status scripts append every snapshot to the `records` stream; each worker (and
each API process) runs a `Recorder` in the consumer group `recorder`, so snapshots
are written to `task_executions` in bulk upserts and acknowledged only once committed.
A recorder that dies leaves its entries pending; another one claims them after
`claim_idle` seconds, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from agentsched.connections import is_transient
from agentsched.db.executions import ExecutionStore
from agentsched.execution import snapshot_row
from agentsched.jobs.batch import snapshots
from agentsched.observability import metrics
from agentsched.serialization import loads

log = logging.getLogger("agentsched.recorder")
GROUP = "recorder"


class Recorder:
    """Consumes the `records` stream and upserts snapshots into SQL in batches."""

    def __init__(
        self,
        redis: aioredis.Redis,
        store: ExecutionStore,
        stream: str,
        *,
        batch: int = 500,
        block_ms: int = 50,
        idle_block_ms: int = 2000,
        linger: float = 0.1,
        claim_idle: float = 30.0,
    ) -> None:
        self.redis = redis
        self.store = store
        self.stream = stream
        self.batch = batch
        self.block_ms = block_ms
        # After a read that found nothing: the next one waits this long (it returns as
        # soon as an entry arrives), so an idle recorder costs one call per 2 s.
        self.idle_block_ms = idle_block_ms
        self.linger = linger
        self._idle = False
        self.claim_idle_ms = int(claim_idle * 1000)
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._task: asyncio.Task[None] | None = None
        self._next_claim = 0.0
        self._claim_cursor: bytes | str = "0-0"
        self._stopping = False

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _write(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        # Only the newest snapshot of each execution in the batch is decoded and written
        # (entries carry id `i` and seq `q` beside the JSON snapshot `s`). An enqueue's
        # entry `b` holds its jobs' first snapshots (seq 1): any later one is newer.
        newest: dict[str, tuple[int, bytes | dict[str, str]]] = {}
        for entry_id, fields in entries:
            if b"b" in fields:
                for h in self._first_snapshots(entry_id, fields):
                    newest.setdefault(h["id"], (1, h))
                continue
            try:
                key, seq = fields[b"i"].decode(), int(fields[b"q"])
            except (KeyError, ValueError):
                log.warning("dropping malformed execution snapshot %r", entry_id)
                continue
            seen = newest.get(key)
            if seen is None or seen[0] < seq:
                newest[key] = (seq, fields.get(b"s", b""))
        rows: list[dict[str, Any]] = []
        for _seq, snapshot in newest.values():
            try:
                h = snapshot if isinstance(snapshot, dict) else loads(snapshot)
                rows.append(snapshot_row(h))
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("dropping malformed execution snapshot: %r", exc)
        # At most `batch` rows a statement: one enqueue's entry may hold thousands.
        for start in range(0, len(rows), self.batch):
            await self.store.upsert_many(rows[start : start + self.batch])
        metrics.recorder_rows(row["app"] for row in rows)
        ids = [entry_id for entry_id, _ in entries]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(self.stream, GROUP, *ids)
            pipe.xdel(self.stream, *ids)
            await pipe.execute()

    @staticmethod
    def _first_snapshots(entry_id: bytes, fields: dict[bytes, bytes]) -> list[dict[str, str]]:
        try:
            return snapshots(fields[b"b"], fields.get(b"x", b""))
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            log.warning("dropping malformed enqueue snapshots %r: %r", entry_id, exc)
            return []

    async def step(self, block_ms: int | None = None) -> int:
        """Read one batch (new entries, then stale ones) and write it; returns its size."""
        if block_ms is None:
            block_ms = self.idle_block_ms if self._idle else self.block_ms
        response = await self.redis.xreadgroup(
            GROUP, self.consumer, {self.stream: ">"}, count=self.batch, block=block_ms
        )
        entries = response[0][1] if response else []
        self._idle = not entries
        now = time.monotonic()
        if now >= self._next_claim:
            # On a timer (half the idle time after which an entry is another recorder's
            # to take): a dead recorder's pending batch is taken within `claim_idle` * 1.5.
            self._next_claim = now + self.claim_idle_ms / 2000
            claimed = await self.redis.xautoclaim(
                self.stream,
                GROUP,
                self.consumer,
                self.claim_idle_ms,
                self._claim_cursor,
                count=self.batch,
            )
            self._claim_cursor = claimed[0] or "0-0"
            entries = [*entries, *(e for e in claimed[1] if e[1])]
        if entries:
            await self._write(entries)
        return len(entries)

    async def run(self) -> None:
        ready = False
        while not self._stopping:
            try:
                if not ready:
                    await self._ensure_group()
                    ready = True
                if 0 < await self.step() < self.batch:
                    # A short pause lets a busy queue fill bigger batches (one statement
                    # for hundreds of rows) while rows still land within ~0.1 s.
                    await asyncio.sleep(self.linger)
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._ensure_group()
                    continue
                log.error("recorder: %s", exc)
                await asyncio.sleep(1)
            except (RedisConnectionError, OSError) as exc:
                if not is_transient(exc):  # an outage is logged by the connection layer
                    log.error("recorder: Redis unavailable: %s", exc)
                await asyncio.sleep(1)
            except Exception as exc:  # a database outage must not stop the loop
                log.error("recorder: cannot write executions: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(1)

    async def drain(self) -> None:
        """Write everything already in the stream (used on shutdown and in tests).

        Starts with this consumer's own pending entries: a batch read just before
        `stop()` cancelled the loop is still unacknowledged.
        """
        await self._ensure_group()
        while True:
            response = await self.redis.xreadgroup(
                GROUP, self.consumer, {self.stream: "0"}, count=self.batch
            )
            entries = [e for e in (response[0][1] if response else []) if e[1]]
            if not entries:
                break
            await self._write(entries)
        while await self.step(block_ms=self.block_ms) > 0:
            pass

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name="agentsched-recorder")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.drain(), timeout=5)
