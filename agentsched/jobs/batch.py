"""One enqueue call's jobs in the form the enqueue script takes, and its first snapshots.

The jobs of one call mostly share their record's fields (app, function, max_tries,
metadata, enqueue time): those travel once per group of jobs, a template, and each job
sends only its own id, arguments, arq payload, due time, ttl and idempotency key. The
script writes each job's hash and `task.queued` event from its template, and the
call's first snapshots (seq 1) as one `records` entry, `{"b": <batch>}`, that
`snapshots` turns back into one snapshot per job for the recorder. `tracker.Tracker`
sends what it builds.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from arq.jobs import serialize_job

from agentsched.execution import Execution, snapshot_row
from agentsched.observability.tracing import job_serializer
from agentsched.serialization import dumps, dumps_str, loads, now_ms, text, to_ms

EMPTY_ARGS, EMPTY_KWARGS = "[]", "{}"


def shared_fields(execution: Execution, enqueued_ms: int) -> dict[str, str]:
    """The fields of a just-queued execution's hash that are not its own (a template)."""
    h = {
        "app": execution.app,
        "function": execution.function,
        "status": "queued",
        "attempt": "1",
        "max_tries": str(execution.max_tries),
        "metadata": dumps_str(execution.metadata) if execution.metadata else EMPTY_KWARGS,
        "enqueued_at": str(enqueued_ms),
        "seq": "1",
    }
    if execution.task_id:
        h["task_id"] = execution.task_id
    if execution.scheduled_for:
        h["scheduled_for"] = str(int(execution.scheduled_for.timestamp() * 1000))
    return h


def _own(ident: str, args: str, kwargs: str, due: str) -> dict[str, str]:
    return {"id": ident, "args": args, "kwargs": kwargs, "due": due}


def queued_fields(execution: Execution, due_ms: int) -> dict[str, str]:
    """The whole hash of a just-queued execution (every value a string), as the enqueue
    script writes it and its first snapshot carries it; `due_ms` stands in for a
    missing `enqueued_at`."""
    enqueued = to_ms(execution.enqueued_at) if execution.enqueued_at else due_ms
    own = _own(execution.id, _json(execution.args), _json(execution.kwargs), str(due_ms))
    return shared_fields(execution, enqueued) | own


def _json(value: list[Any] | dict[str, Any]) -> str:
    if value:
        return dumps_str(value)
    return EMPTY_ARGS if isinstance(value, list) else EMPTY_KWARGS


_EVENTS: dict[tuple[str, str, str | None], tuple[str, str, str]] = {}


def queued_event(app: str, function: str, task_id: str | None, now_ms: int) -> list[str]:
    """The `task.queued` event's JSON around its execution id, which goes between the
    parts (twice): the event `emit` in status_scripts.lua would write."""
    parts = _EVENTS.get((app, function, task_id))
    if parts is None:
        if len(_EVENTS) >= 1024:
            _EVENTS.clear()
        parts = _EVENTS[app, function, task_id] = (
            '{"id":"',
            '-1","event_type":"task.queued","source_agent":' + dumps_str(app)
            + ',"target_agent":null,"payload":{"execution_id":"',
            '","function":' + dumps_str(function) + ',"app":' + dumps_str(app)
            + ',"status":"queued","attempt":1,"task_id":' + dumps_str(task_id)
            + '},"created_at":',
        )  # fmt: skip
    return [parts[0], parts[1], parts[2] + dumps_str(now_ms / 1000) + "}"]


class Batch:
    """The jobs of one enqueue call, encoded as they are added; `argv` is the script's
    arguments, then `done` takes its reply."""

    def __init__(self) -> None:
        self.now = 0  # ms: the first job's enqueue time, which its event says too
        self._templates: dict[tuple[Any, ...], int] = {}
        self._template_argv: list[Any] = []
        self._shared: list[dict[str, str]] = []
        self._payloads: dict[tuple[int, str, str], bytes] = {}
        self._jobs: list[Any] = []
        self._own: list[list[Any]] = []  # template index, id, args, kwargs, due: per job
        self.results: list[tuple[bool, str]] = []
        self._stamp: tuple[dt.datetime | None, int] = (None, 0)

    def add(self, execution: Execution, score_ms: int, ttl_ms: int, idempotency: str) -> None:
        """One job; `idempotency` is its key's Redis key, or ''."""
        stamp = execution.enqueued_at
        if stamp is None:
            enqueued = score_ms
        elif stamp is self._stamp[0]:  # a batch's jobs share one enqueue time
            enqueued = self._stamp[1]
        else:
            enqueued = to_ms(stamp)
            self._stamp = (stamp, enqueued)
        if not self.now:
            self.now = enqueued if stamp is not None else now_ms()
        metadata = execution.metadata
        shape = (
            execution.function, execution.max_tries, dumps(metadata) if metadata else b"",
            execution.task_id, execution.scheduled_for, enqueued,
        )  # fmt: skip
        template = self._templates.get(shape)
        if template is None:
            template = self._templates[shape] = len(self._shared)
            shared = shared_fields(execution, enqueued)
            fields = [item for pair in shared.items() for item in pair]
            event = queued_event(execution.app, execution.function, execution.task_id, self.now)
            self._template_argv += [len(fields), *fields, *event]
            self._shared.append(shared)
        args, kwargs = _json(execution.args), _json(execution.kwargs)
        payload = self._payloads.get((template, args, kwargs))
        if payload is None:
            payload = self._payloads[template, args, kwargs] = serialize_job(
                execution.function,
                execution.args,  # type: ignore[arg-type]
                execution.kwargs,
                None,
                enqueued,
                serializer=job_serializer(metadata),  # the trace context rides along
            )
        due = str(score_ms)
        self._jobs += [template + 1, execution.id, args, kwargs, payload, due, ttl_ms, idempotency]
        self._own.append([template, execution.id, args, kwargs, due])

    def argv(self, maxlen: str, keep_ms: str, exec_prefix: str) -> list[Any]:
        """The enqueue script's ARGV (see status_scripts.ENQUEUE)."""
        blob = dumps([self._shared, self._own])
        head = [maxlen, keep_ms, exec_prefix, self.now, blob, len(self._shared)]
        return [*head, *self._template_argv, *self._jobs]

    def done(self, reply: Any) -> list[tuple[bool, str]]:
        """The script's reply as (created, id) per job: a duplicate names the execution
        it found (same id, or same idempotency key)."""
        flags, named = reply
        found = iter(named)
        self.results = [
            (True, own[1]) if flag == "1" else (False, text(next(found)))
            for flag, own in zip(text(flags), self._own, strict=True)
        ]
        return self.results

    def rows(self) -> list[dict[str, Any]]:
        """The `task_executions` rows of the jobs this call created (after `done`)."""
        return [
            snapshot_row(self._shared[own[0]] | _own(*own[1:]))
            for own, (created, _) in zip(self._own, self.results, strict=True)
            if created
        ]


def snapshots(blob: bytes, skipped: bytes) -> list[dict[str, str]]:
    """The first snapshots a `records` entry of the enqueue script holds, leaving out the
    jobs at the `skipped` positions (comma-separated: duplicates it did not create)."""
    shared, own = loads(blob)
    left_out = {int(i) for i in skipped.split(b",")} if skipped else set()
    return [
        shared[job[0]] | _own(*job[1:])
        for position, job in enumerate(own)
        if position not in left_out
    ]
