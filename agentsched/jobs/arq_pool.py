"""arq's Redis pool, with agentsched's status scripts riding in arq's own transactions.

arq claims a job with four round trips (WATCH the in-progress key, EXISTS, ZSCORE,
then MULTI/PSETEX/EXEC). The pipelines of this pool answer that sequence with one
script that checks and sets the in-progress key atomically, and hand arq the same
answers; the MULTI/EXEC that follows is then already done.

arq fetches a job (`GET arq:job:<id>`, `INCR arq:retry:<id>`, ...) and finishes it
(`DEL ... arq:in-progress:<id> ...`) in MULTI/EXEC transactions of its own. The
pipelines of this pool recognise those two by their commands and append one script
to each: the start script to the fetch, and to the finish the finish script that the
job runner left for that job. A job's status changes then cost no round trip of their
own, and arq's finish and agentsched's commit together. Only this module knows the
shape of arq's transactions (arq 0.26-0.28); anything it does not recognise runs
unchanged, and the runner falls back to sending its scripts itself.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from agentsched.jobs.tracker import Tracker

CLAIM = """
local exists = redis.call('EXISTS', KEYS[1])
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if exists == 0 and score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('PSETEX', KEYS[1], ARGV[3], '1')
  return {0, score, 1}
end
return {exists, score or '', 0}
"""
CLAIM_SHA = hashlib.sha1(CLAIM.encode()).hexdigest()


class StatusRides:
    """What rides along: start results waiting for their job, finishes waiting for arq."""

    def __init__(self, queue: str = "", in_progress_ms: int = 0) -> None:
        # arq's in-progress TTL (its largest function timeout + 10 s) for the claim.
        self.queue = queue
        self.in_progress_ms = in_progress_ms
        self.tracker: Tracker | None = None
        self.worker = ""
        # job id -> (status the start script answered, the attempt it started).
        self.started: dict[str, tuple[str, int]] = {}
        # Jobs this worker stopped because it could not renew their lease: another
        # worker may run them now, so nothing of theirs may reach Redis from here.
        self.lost: set[str] = set()
        # Called with (job id, finish command) after a finish rode in arq's transaction:
        # `orphaned` when it found no record in Redis, `finished` otherwise.
        self.orphaned: Callable[[str, tuple[Any, ...]], None] | None = None
        self.finished: Callable[[str, tuple[Any, ...]], None] | None = None
        self.finishes: dict[str, tuple[Any, ...]] = {}

    def extra_for(
        self, stack: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]]
    ) -> tuple[str, str]:
        """('start' | 'finish' | '', job id) for a transaction of arq's."""
        if self.tracker is None or not stack:
            return "", ""
        first = stack[0][0]
        if (
            len(stack) >= 2
            and first[0] == "GET"
            and str(first[1]).startswith(job_key_prefix)
            and stack[1][0][0] in ("INCR", "INCRBY")
            and str(stack[1][0][1]).startswith(retry_key_prefix)
        ):
            return "start", str(first[1])[len(job_key_prefix) :]
        for args, _options in stack:
            if args[0] == "DEL":
                for name in args[1:]:
                    if str(name).startswith(in_progress_key_prefix):
                        job_id = str(name)[len(in_progress_key_prefix) :]
                        if job_id in self.lost:
                            return "drop", job_id
                        if job_id in self.finishes:
                            return "finish", job_id
        return "", ""


class RidingPipeline(Pipeline):
    """A pipeline that appends agentsched's script to arq's fetch and finish."""

    def __init__(self, rides: StatusRides, *args: Any) -> None:
        super().__init__(*args)
        self.rides = rides
        self._claim: tuple[str, str] | None = None  # (in-progress key, job id)
        self._claimed: tuple[int, float | None, bool] | None = None

    async def watch(self, *names: Any) -> Any:  # type: ignore[override]
        name = str(names[0]) if len(names) == 1 else ""
        if self.rides.queue and name.startswith(in_progress_key_prefix):
            self._claim = (name, name[len(in_progress_key_prefix) :])
            return True
        return await super().watch(*names)

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._claim is not None and not self.explicit_transaction:
            if args[0] == "EXISTS":
                return self._claim_exists()
            if args[0] == "ZSCORE" and self._claimed is not None:
                return self._claim_score()
        return super().execute_command(*args, **kwargs)

    async def _claim_exists(self) -> int:
        assert self._claim is not None
        key, job_id = self._claim
        now = int(time.time() * 1000)
        args = (2, key, self.rides.queue, job_id, now, self.rides.in_progress_ms)
        run: Any = self.immediate_execute_command
        try:
            reply = await run("EVALSHA", CLAIM_SHA, *args)
        except NoScriptError:  # Redis restarted: EVAL loads it again
            reply = await run("EVAL", CLAIM, *args)
        exists, score, claimed = reply
        self._claimed = (int(exists), float(score) if score else None, bool(claimed))
        return int(exists)

    async def _claim_score(self) -> float | None:
        assert self._claimed is not None
        return self._claimed[1]

    async def reset(self) -> None:
        self._claim = None
        self._claimed = None
        await super().reset()  # type: ignore[no-untyped-call]

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self._claimed is not None and self._claimed[2]:
            # arq's MULTI/PSETEX/EXEC after a claim the script already made.
            size = len(self.command_stack)
            await self.reset()
            return [True] * size
        kind, job_id = self.rides.extra_for(self.command_stack)
        if kind == "drop":
            # arq's end of a job this worker gave up: its keys belong to whoever took it.
            size = len(self.command_stack)
            self.rides.lost.discard(job_id)
            self.rides.finishes.pop(job_id, None)
            await self.reset()
            return [True] * size
        tracker = self.rides.tracker
        if not kind or tracker is None:
            return await super().execute(raise_on_error)
        if kind == "start":
            command = tracker.start_command(job_id, self.rides.worker)
        else:
            command = self.rides.finishes.pop(job_id)
        size = len(self.command_stack)
        self.execute_command(*command)
        results = await super().execute(raise_on_error=False)
        own, results = results[size], results[:size]
        if isinstance(own, NoScriptError):  # Redis lost its scripts: run it on its own
            own = await tracker.run_command(command)
        elif isinstance(own, Exception):
            raise own
        if kind == "start":
            self.rides.started[job_id] = started_reply(own)
        elif own in (b"", "") and self.rides.orphaned is not None:
            self.rides.orphaned(job_id, command)
        elif self.rides.finished is not None:
            self.rides.finished(job_id, command)
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results


def started_reply(reply: Any) -> tuple[str, int]:
    """(status, attempt) from the start script's reply inside arq's fetch."""
    if isinstance(reply, list):
        status, attempt = reply
        return (status.decode() if isinstance(status, bytes) else str(status)), int(attempt)
    return (reply.decode() if isinstance(reply, bytes) else str(reply)), 0


class RidingArqRedis(ArqRedis):
    """arq's pool whose transactions carry agentsched's status scripts."""

    def __init__(self, rides: StatusRides, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rides = rides

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return RidingPipeline(
            self.rides, self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
