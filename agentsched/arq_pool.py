"""arq's Redis pool, with agentsched's status scripts riding in arq's own transactions.

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

from collections.abc import Mapping, Sequence
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from agentsched.tracking import Tracker


class StatusRides:
    """What rides along: start results waiting for their job, finishes waiting for arq."""

    def __init__(self) -> None:
        self.tracker: Tracker | None = None
        self.worker = ""
        self.started: dict[str, str] = {}
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
                        if job_id in self.finishes:
                            return "finish", job_id
        return "", ""


class RidingPipeline(Pipeline):
    """A pipeline that appends agentsched's script to arq's fetch and finish."""

    def __init__(self, rides: StatusRides, *args: Any) -> None:
        super().__init__(*args)
        self.rides = rides

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        kind, job_id = self.rides.extra_for(self.command_stack)
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
            self.rides.started[job_id] = own.decode() if isinstance(own, bytes) else str(own)
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results


class RidingArqRedis(ArqRedis):
    """arq's pool whose transactions carry agentsched's status scripts."""

    def __init__(self, rides: StatusRides, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rides = rides

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return RidingPipeline(
            self.rides, self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
