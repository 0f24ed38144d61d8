"""Ends that arq decides itself: an unknown function, a payload that is not JSON, a job
key that expired, an abort before the start, arq's own retry limit.

arq hands these to its result serializer without calling the task; the worker's
serializer passes them here, and they are recorded like any other end.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.jobs import DeserializationError, SerializationError
from arq.worker import JobExecutionFailed

from agentsched.jobs.tracker import Tracker
from agentsched.observability import metrics
from agentsched.registry import registered
from agentsched.status import ErrorKind

log = logging.getLogger("agentsched.worker")


async def record_arq_ending(tracker: Tracker, app: str, data: dict[str, Any]) -> None:
    """Record an end arq decided without running the task (`data`: arq's result dict)."""
    exc = data.get("r")
    status, kind = "failed", ErrorKind.EXCEPTION
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, asyncio.CancelledError):
        status, kind, message = "cancelled", ErrorKind.EXCEPTION, ""
    elif isinstance(exc, DeserializationError | SerializationError):
        kind = ErrorKind.DESERIALIZATION
        message = "DeserializationError: the job payload is not agentsched JSON"
    elif isinstance(exc, JobExecutionFailed):
        text = str(exc)
        if "expired" in text:
            kind = ErrorKind.EXPIRED
        elif "not found" in text:
            kind, message = (
                ErrorKind.UNKNOWN_FUNCTION,
                f"UnknownFunction: {data.get('f')!r} is not a registered task",
            )
        elif "retries" in text:
            kind = ErrorKind.WORKER_LOST
    expired = kind is ErrorKind.EXPIRED
    function = data.get("f") if isinstance(data.get("f"), str) else "<unknown>"
    log.warning("job %s (%s) ended by the worker: %s", data["id"], function, kind.value)
    label = str(function) if function in registered() else "<unknown>"  # bounded labels
    metrics.finished(app, label, status, kind.value)
    try:
        await tracker.fail_outside(
            str(data["id"]),
            status,
            error=message,
            error_kind=kind.value,
            function=str(function),
            args=data.get("a") or (),
            kwargs=data.get("k") or {},
            enqueued_ms=int(data.get("et") or 0),
            attempt=int(data.get("t") or 1),
            only_if_known=expired,
        )
    except Exception as exc2:
        log.error("cannot record the end of job %s: %s", data["id"], exc2)
