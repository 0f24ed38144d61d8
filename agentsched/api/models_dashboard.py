"""HTTP bodies of the endpoints the dashboard reads: overview, workers, schedule outlook,
dead letters, and the keyset page of the history (pydantic read models)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from agentsched.api.models import ExecutionRead, Page
from agentsched.errors import InvalidInput
from agentsched.events.message import DeadLetter, EventMessage

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def make_cursor(enqueued_at: dt.datetime, execution_id: str) -> str:
    """The keyset position after a row: its enqueue time in microseconds and its id."""
    micros = (enqueued_at - EPOCH) // dt.timedelta(microseconds=1)
    return f"{micros}_{execution_id}"


def parse_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """`(enqueued_at, id)` of a cursor; `InvalidInput("cursor")` when it is not one."""
    micros, _, ident = cursor.partition("_")
    well_formed = micros.isdigit() and len(micros) <= 17 and 0 < len(ident) <= 36
    if not well_formed or not ident.replace("-", "").isalnum():
        raise InvalidInput("cursor", "is not a next_cursor of this endpoint")
    return EPOCH + dt.timedelta(microseconds=int(micros)), ident


class ExecutionPage(Page[ExecutionRead]):
    """A page of the history, with the keyset cursor of the next page."""

    next_cursor: str | None = Field(
        default=None,
        description="Pass as `cursor` for the next page (sort `enqueued_at` only); "
        "null on the last page",
    )


class MinuteStats(BaseModel):
    """What ended in one minute of the window."""

    start: dt.datetime
    finished: int = Field(description="Executions that ended (success, failed, cancelled)")
    failed: int
    runtime_p50_ms: float | None
    runtime_p95_ms: float | None
    pickup_p50_ms: float | None = Field(description="Enqueue to start, first attempts")
    pickup_p95_ms: float | None


class OverviewRead(BaseModel):
    """The app right now (from Redis) and per-minute figures of the window (from SQL)."""

    app: str
    queued: int = Field(description="Due now, waiting for a worker")
    deferred: int = Field(description="Waiting for their delay, ETA or retry back-off")
    running: int
    workers_alive: int
    window_minutes: int
    minutes: list[MinuteStats] = Field(description="Minutes with something in them, oldest first")


class WorkerRead(BaseModel):
    """A worker of this app that renewed its heartbeat recently."""

    id: str
    host: str
    pid: int | None
    started_at: dt.datetime | None
    running: int | None = Field(description="Jobs it runs now")
    done: int | None = Field(description="Jobs it finished since it started")
    last_heartbeat: dt.datetime


class WorkerList(BaseModel):
    """Live workers, the most recent heartbeat first."""

    items: list[WorkerRead]
    total: int


class ScheduleOutlook(BaseModel):
    """How one schedule reads to a person, when it runs next, how its last run went."""

    task_id: str
    description: str = Field(description="Cron or interval in words")
    next_runs: list[dt.datetime]
    last_execution_id: str | None
    last_status: str | None


class OutlookList(BaseModel):
    """The outlook of every schedule of the app (by name)."""

    items: list[ScheduleOutlook]
    total: int


class DeadLetterRead(BaseModel):
    """An event this app's consumer group gave up on."""

    model_config = ConfigDict(extra="forbid")

    entry_id: str
    original_id: str
    group: str
    reason: str = Field(description="The last error, or why it was malformed")
    deliveries: int
    event: EventMessage | None
    data: str | None = Field(description="The raw entry when it is not a valid event")

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterRead:
        return cls(
            entry_id=letter.entry_id,
            original_id=letter.original_id,
            group=letter.group,
            reason=letter.reason,
            deliveries=letter.deliveries,
            event=letter.event,
            data=None if letter.event is not None else letter.data,
        )


class DeadLetterList(BaseModel):
    """This app's dead letters, newest first."""

    items: list[DeadLetterRead]
    total: int
