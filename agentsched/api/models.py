"""HTTP bodies of the executions, functions and health endpoints (pydantic).

Separate Create / Read models: the API never returns a dataclass or an ORM row, and
every value a client sends is bounded here before the library sees it. Schedules'
models are in `models_tasks.py`.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from agentsched.execution import Execution
from agentsched.jobs.queue import MAX_DELAY_S
from agentsched.registry import TaskDef
from agentsched.status import ErrorKind, TaskStatus

T = TypeVar("T")
MAX_NODES = 100_000
# Filters by function name: the characters a registered name can have (no NUL, no spaces).
FUNCTION_PATTERN = r"^[A-Za-z0-9_.:-]+$"


def check_json_value(value: Any) -> Any:
    """`value` unchanged; ValueError for a NUL in a string (PostgreSQL rejects it) or a
    NaN / Infinity (Python's JSON parser accepts them, JSON has no such numbers).

    Iterative, so a deeply nested value cannot exhaust the stack.
    """
    stack = [value]
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise ValueError(f"more than {MAX_NODES} values")
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("strings must not contain NUL characters")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("NaN and Infinity are not JSON numbers")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return value


class Page(BaseModel, Generic[T]):
    """One page of a list, with the total number of matching items."""

    items: list[T]
    total: int = Field(description="Matching items in all pages")
    limit: int
    offset: int


class ExecutionCreate(BaseModel):
    """Body of `POST /executions`: run a registered task function."""

    # strict: a boolean is not a number and a string is not a boolean (422 naming the field).
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "function": "email.send_digest",
                    "args": [42],
                    "kwargs": {"folder": "INBOX"},
                    "delay": 10,
                    "metadata": {"requested_by": "support-bot"},
                }
            ]
        },
    )

    function: str = Field(
        min_length=1, max_length=512, description="A registered task name (see GET /functions)"
    )
    args: list[Any] = Field(default_factory=list, description="Positional arguments (JSON)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments (JSON)")
    delay: float | None = Field(
        default=None, ge=0, le=MAX_DELAY_S, allow_inf_nan=False,
        description="Seconds to wait before it runs",
    )  # fmt: skip
    eta: AwareDatetime | None = Field(
        default=None,
        strict=False,  # JSON has no datetime: an ISO 8601 string is the only way to send one
        description="When to run it (instead of delay), at most 366 days ahead; timezone required",
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Kept with the record")
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="A second request with the same key returns the first execution",
    )  # fmt: skip

    @field_validator("function", "idempotency_key", "args", "kwargs", "metadata")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return check_json_value(value)


class ExecutionBatchCreate(BaseModel):
    """Body of `POST /executions/batch`: many jobs, queued in one round trip."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"items": [{"function": "email.send_digest", "args": [42]}]}]
        },
    )

    items: list[ExecutionCreate] = Field(
        min_length=1, max_length=1000, description="Jobs as `POST /executions` takes them"
    )


class ExecutionRead(BaseModel):
    """An execution of a task: its status, attempt, result or error, and its times."""

    # extra="forbid" on every model here: with extras allowed, pydantic's mypy plugin
    # gives __init__ a **kwargs that clashes with the field named `kwargs`.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
                    "task_id": None,
                    "function": "email.send_digest",
                    "status": "success",
                    "result": {"sent": 3},
                    "error": None,
                    "error_kind": None,
                    "attempt": 1,
                    "max_tries": 4,
                    "args": [42],
                    "kwargs": {},
                    "metadata": {"requested_by": "support-bot"},
                    "scheduled_for": None,
                    "enqueued_at": "2025-01-01T07:00:00Z",
                    "started_at": "2025-01-01T07:00:00.003000Z",
                    "finished_at": "2025-01-01T07:00:00.210000Z",
                    "progress": 1.0,
                    "progress_message": "3 of 3 digests sent",
                }
            ]
        },
    )

    id: str
    task_id: str | None = Field(description="The schedule that fired it, if any")
    function: str
    status: TaskStatus
    result: Any = Field(description="The return value (JSON) once `success`")
    error: str | None = Field(description="Message and short traceback once `failed`")
    error_kind: ErrorKind | None
    attempt: int
    max_tries: int
    args: list[Any]
    kwargs: dict[str, Any]
    metadata: dict[str, Any]
    scheduled_for: dt.datetime | None = Field(description="Fire time of a scheduled run")
    enqueued_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    progress: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="What the task last reported with `agentsched.progress` (1 once it succeeded)",
    )
    progress_message: str | None = Field(default=None, description="Its last progress message")

    @classmethod
    def of(cls, execution: Execution) -> ExecutionRead:
        """The read model of an `Execution` record."""
        return cls(
            id=execution.id,
            task_id=execution.task_id,
            function=execution.function,
            status=execution.status,
            result=execution.result,
            error=execution.error,
            error_kind=execution.error_kind,
            attempt=execution.attempt,
            max_tries=execution.max_tries,
            args=execution.args,
            kwargs=execution.kwargs,
            metadata=execution.metadata,
            scheduled_for=execution.scheduled_for,
            enqueued_at=execution.enqueued_at,
            started_at=execution.started_at,
            finished_at=execution.finished_at,
            progress=execution.progress,
            progress_message=execution.progress_message,
        )


class ParameterRead(BaseModel):
    """One parameter of a task function."""

    name: str
    annotation: str | None
    required: bool
    default: str | None = Field(description="repr() of the default value")


class FunctionRead(BaseModel):
    """A registered task function: the only names that can be run or scheduled."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "email.send_digest",
                    "description": "Send the daily digest.",
                    "is_async": False,
                    "timeout": 120.0,
                    "max_retries": 3,
                    "retry_backoff": 1.0,
                    "parameters": [
                        {"name": "user_id", "annotation": "int", "required": True, "default": None}
                    ],
                }
            ]
        }
    )

    name: str
    description: str
    is_async: bool
    timeout: float | None = Field(description="Seconds; null = AGENTSCHED_JOB_TIMEOUT")
    max_retries: int
    retry_backoff: float
    parameters: list[ParameterRead]

    @classmethod
    def of(cls, definition: TaskDef) -> FunctionRead:
        """The read model of a registered `TaskDef`."""
        return cls(
            name=definition.name,
            description=definition.description,
            is_async=definition.is_async,
            timeout=definition.timeout,
            max_retries=definition.max_retries,
            retry_backoff=definition.retry_backoff,
            parameters=[ParameterRead(**p) for p in definition.parameters],
        )


class FunctionList(BaseModel):
    """Every registered task function, by name."""

    items: list[FunctionRead]
    total: int


class ServiceHealth(BaseModel):
    """Whether one backing service answered."""

    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class RedisHealth(ServiceHealth):
    """Redis answered or not, and whether it can lose jobs (see the README's Redis faults)."""

    persistence: str | None = Field(
        default=None, description="aof, rdb, aof+rdb, none, or unknown (CONFIG not allowed)"
    )
    maxmemory_policy: str | None = Field(
        default=None, description="noeviction keeps jobs; any evicting policy may drop them"
    )


class WorkersHealth(BaseModel):
    """Workers of this app that renewed their heartbeat recently."""

    live: int = Field(description="Workers with a heartbeat within 3 lease periods")
    ids: list[str] = Field(description="Their ids (host:pid:suffix), at most 100")


class SchedulerHealth(BaseModel):
    """The schedules of this app as the scheduler loops see them."""

    ok: bool
    enabled_schedules: int | None = None
    next_run_at: dt.datetime | None = None
    error: str | None = None


class HealthRead(BaseModel):
    """`ok` when Redis and the database answer; `degraded` (HTTP 503) otherwise."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "app": "email-agent",
                    "redis": {"ok": True, "latency_ms": 0.4, "error": None},
                    "database": {"ok": True, "latency_ms": 1.2, "error": None},
                    "workers": {"live": 1, "ids": ["host:1234:ab12cd"]},
                    "scheduler": {"ok": True, "enabled_schedules": 2,
                                  "next_run_at": "2025-01-01T07:05:00Z", "error": None},
                }
            ]
        }
    )  # fmt: skip

    status: Literal["ok", "degraded"]
    app: str
    redis: RedisHealth
    database: ServiceHealth
    workers: WorkersHealth
    scheduler: SchedulerHealth


class ExecutionBatchRead(BaseModel):
    """The executions a batch queued, in the order of its items."""

    model_config = ConfigDict(extra="forbid")

    items: list[ExecutionRead]
