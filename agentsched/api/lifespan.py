"""Setting up the router's connections in an app: `scheduler_lifespan`, `agentsched_context`.

Either one opens a `Runtime` (Redis and the database), imports
`AGENTSCHED_TASK_MODULES`, loads the app's tasks file(s), starts a `Recorder` (so
executions enqueued through the API reach SQL even when no worker runs), keeps the
dashboard's per-minute figures aggregated (`agentsched.db.stats.minutes_kept_warm`) and
puts the state on `app.state.agentsched`, where the router finds it. Everything is closed in
reverse order on the way out.

Use it as the app's lifespan::

    app = FastAPI(lifespan=scheduler_lifespan())
    app.include_router(scheduler_router, prefix="/api/scheduler")

or inside a lifespan of your own::

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with agentsched_context(app):
            ...  # your own start-up
            yield

A failed start (bad setting, Redis or database down, bad tasks file) is logged here as
one `agentsched: ...` line. Starlette then hands the server the whole traceback of the
same error, which uvicorn would print after it: `_ServerLogFilter` drops that record,
so the line is all the user reads, however the app's lifespan nests ours.
"""

from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from agentsched.api.deps import STATE_ATTR, ApiState
from agentsched.db.stats import minutes_kept_warm
from agentsched.errors import AgentschedError
from agentsched.jobs.queue import TaskQueue
from agentsched.jobs.recorder import Recorder
from agentsched.jobs.redis_checks import warn_if_redis_can_lose_jobs
from agentsched.jobs.runtime import Runtime
from agentsched.observability import observe_process
from agentsched.registry import import_task_modules
from agentsched.scheduling.service import Scheduler, load_tasks_files
from agentsched.settings import Settings, get_settings

log = logging.getLogger("agentsched.api")
# The loggers through which ASGI servers report a failed lifespan (uvicorn's).
SERVER_LOGGERS = ("uvicorn.error",)


class _ServerLogFilter(logging.Filter):
    """Drops a server's report of an error this module has already logged as one line.

    Starlette passes the traceback to the server while it handles the error, so the
    exception being handled when the server logs is the one to look at.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reported: weakref.WeakSet[BaseException] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        return sys.exc_info()[1] not in self.reported


_server_log = _ServerLogFilter()


def _report(exc: AgentschedError) -> None:
    """Log `exc` as the one line of a failed start, and keep the server from repeating it."""
    log.error("agentsched: %s", exc)
    _server_log.reported.add(exc)
    for name in SERVER_LOGGERS:
        logging.getLogger(name).addFilter(_server_log)  # once: a logger keeps no duplicates


@asynccontextmanager
async def agentsched_context(
    app: Any,
    settings: Settings | None = None,
    *,
    tasks_files: Sequence[str] | None = None,
    record: bool = True,
) -> AsyncIterator[ApiState]:
    """Open agentsched for `app` (a FastAPI or Starlette app) and yield its state.

    `settings` default to `get_settings()` (the `AGENTSCHED_*` environment), read
    here, not at import. `tasks_files` defaults to `settings.tasks_file`; pass `[]`
    to load none. `record=False` skips the recorder (when workers do all recording).
    A configuration or connection problem raises one `AgentschedError` line.
    """
    try:
        settings = settings or get_settings()
        import_task_modules(settings.task_modules)
        runtime = await Runtime(settings).open()
    except AgentschedError as exc:
        _report(exc)
        raise
    recorder: Recorder | None = None
    observed = observe_process(settings, runtime.redis)  # metrics port, log format, tracing
    try:
        files = list(settings.tasks_file if tasks_files is None else tasks_files)
        if files:
            await load_tasks_files(runtime, files)
        # Once the start has succeeded: a bad tasks file is the only line it prints.
        await warn_if_redis_can_lose_jobs(runtime.redis)
        if record:
            recorder = Recorder(
                runtime.redis, runtime.executions, runtime.tracker().keys.records,
                batch=settings.record_batch,
            )  # fmt: skip
            recorder.start()
        state = ApiState(
            settings=settings,
            runtime=runtime,
            queue=TaskQueue(runtime=runtime),
            scheduler=Scheduler(runtime),
            recorder=recorder,
        )
        setattr(app.state, STATE_ATTR, state)
        try:
            # The Overview's settled minutes aggregated before its first request.
            async with minutes_kept_warm(runtime.engine, settings.app):
                yield state
        finally:
            if getattr(app.state, STATE_ATTR, None) is state:
                delattr(app.state, STATE_ATTR)
    except AgentschedError as exc:
        _report(exc)
        raise
    finally:
        observed.stop()
        if recorder is not None:
            await recorder.stop()
        await runtime.close()


def scheduler_lifespan(
    settings: Settings | None = None, *, tasks_files: Sequence[str] | None = None
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A lifespan for `FastAPI(lifespan=...)` that runs `agentsched_context` for the app.

    `settings` and `tasks_files` as in `agentsched_context`; with no settings the
    environment is read when the app starts.
    """

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with agentsched_context(app, settings, tasks_files=tasks_files):
            yield

    return lifespan
