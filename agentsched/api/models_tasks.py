"""HTTP bodies of the schedule endpoints (`/tasks`): Create, Update (merge-patch), Read.

A schedule is created with the fields of a `tasks.yaml` entry and read back with its
`id`, those fields (the interval in seconds), `source` and its run times. The models
bound every value; the scheduler then validates cron, interval, timezone and the
function name with `ScheduleSpec`, and its errors name the field (422).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from agentsched.api.models import check_json_value
from agentsched.db.schedules import Schedule
from agentsched.scheduling.rules import MAX_INTERVAL

MisfirePolicy = Literal["run_once", "skip", "run_all"]
Overlap = Literal["skip", "allow"]
NAME_DOC = "Unique per app: letters, digits, '.', '_', ':', '-'"
NOT_CLEARABLE = (
    "name", "function", "timezone", "args", "kwargs", "enabled", "misfire_policy",
    "max_catchup", "overlap",
)  # fmt: skip
INTERVAL_DOC = "Seconds (number) or a duration string such as '30s', '5m', '1h'"

_CREATE_EXAMPLE: dict[str, Any] = {
    "name": "check-inbox",
    "function": "app.services.email_service.check_inbox",
    "interval": "5m",
    "kwargs": {"folder": "INBOX"},
}
_CRON_EXAMPLE: dict[str, Any] = {
    "name": "daily-digest",
    "function": "app.services.email_service.send_digest",
    "cron": "0 7 * * mon-fri",
    "timezone": "Europe/Berlin",
    "enabled": True,
}


class _Checked(BaseModel):
    # strict: `"interval": true` or `"enabled": "yes"` is a 422 naming the field, not a
    # schedule that runs every second or a string taken for true.
    model_config = ConfigDict(strict=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return check_json_value(value)

    @field_validator("interval", check_fields=False)
    @classmethod
    def _interval(cls, value: float | str | None) -> float | str | None:
        # Bounded here; the scheduler parses and validates it.
        if isinstance(value, str) and len(value) > 32:
            raise ValueError("at most 32 characters")
        if isinstance(value, float) and not 0 < value < 10**9:
            raise ValueError("must be a positive number of seconds")
        return value


class TaskCreate(_Checked):
    """Body of `POST /tasks`: one `tasks.yaml` entry; exactly one of `cron` / `interval`."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [_CREATE_EXAMPLE, _CRON_EXAMPLE]},
    )

    name: str = Field(min_length=1, max_length=200, description=NAME_DOC)
    function: str = Field(min_length=1, max_length=512, description="A registered task name")
    cron: str | None = Field(default=None, max_length=200, description="5-field crontab")
    interval: float | str | None = Field(default=None, description=INTERVAL_DOC)
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description="IANA name")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    description: str | None = Field(default=None, max_length=1000)
    misfire_policy: MisfirePolicy = Field(
        default="run_once", description="Fire times missed during downtime: run one, none, all"
    )
    misfire_grace_seconds: float | None = Field(
        default=None, ge=0, le=MAX_INTERVAL, allow_inf_nan=False
    )
    max_catchup: int = Field(default=10, ge=1, le=1000, description="Most runs of run_all")
    overlap: Overlap = Field(
        default="skip", description="skip: no new run while the previous one is unfinished"
    )


class TaskUpdate(_Checked):
    """Body of `PATCH /tasks/{id}`: merge-patch; absent keys stay, `null` clears.

    Only `cron`, `interval`, `description` and `misfire_grace_seconds` can be cleared;
    `{"cron": "*/5 * * * *", "interval": null}` switches an interval schedule to cron.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"cron": "*/5 * * * *", "interval": None}, {"enabled": False}]
        },
    )

    # Absent keys are unchanged. The non-clearable fields admit no null (see _not_null);
    # SkipJsonSchema keeps that None out of the schema.
    name: str | SkipJsonSchema[None] = Field(
        default=None, min_length=1, max_length=200, description=NAME_DOC
    )
    function: str | SkipJsonSchema[None] = Field(default=None, min_length=1, max_length=512)
    cron: str | None = Field(default=None, max_length=200)
    interval: float | str | None = Field(default=None, description=INTERVAL_DOC)
    timezone: str | SkipJsonSchema[None] = Field(default=None, min_length=1, max_length=64)
    args: list[Any] | SkipJsonSchema[None] = None
    kwargs: dict[str, Any] | SkipJsonSchema[None] = None
    enabled: bool | SkipJsonSchema[None] = None
    description: str | None = Field(default=None, max_length=1000)
    misfire_policy: MisfirePolicy | SkipJsonSchema[None] = None
    misfire_grace_seconds: float | None = Field(
        default=None, ge=0, le=MAX_INTERVAL, allow_inf_nan=False
    )
    # The bounds on the int itself: on the union pydantic would emit bare ge/le keywords,
    # which are no JSON Schema, so clients (and schemathesis) would not see them.
    max_catchup: Annotated[int, Field(ge=1, le=1000)] | SkipJsonSchema[None] = None
    overlap: Overlap | SkipJsonSchema[None] = None

    @field_validator(*NOT_CLEARABLE, mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError(
                "must not be null (only cron, interval, description and"
                " misfire_grace_seconds can be cleared)"
            )
        return value

    def patch(self) -> dict[str, Any]:
        """The keys the client sent, with their values (null included)."""
        return self.model_dump(exclude_unset=True)


class TaskRead(BaseModel):
    """A schedule as stored: `source` says whether it came from tasks.yaml or the API."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "0d9b3c1e-5a7f-4e2b-9c1d-2f3e4a5b6c7d",
                    "name": "check-inbox",
                    "function": "app.services.email_service.check_inbox",
                    "cron": None,
                    "interval": 300.0,
                    "timezone": "UTC",
                    "args": [],
                    "kwargs": {"folder": "INBOX"},
                    "enabled": True,
                    "source": "api",
                    "description": None,
                    "misfire_policy": "run_once",
                    "misfire_grace_seconds": None,
                    "max_catchup": 10,
                    "overlap": "skip",
                    "skipped_runs": 0,
                    "next_run_at": "2025-01-01T07:05:00Z",
                    "last_run_at": "2025-01-01T07:00:00Z",
                    "created_at": "2025-01-01T06:00:00Z",
                    "updated_at": "2025-01-01T06:00:00Z",
                }
            ]
        },
    )

    id: str
    name: str
    function: str
    cron: str | None
    interval: float | None = Field(description="Seconds between runs (null for cron)")
    timezone: str
    args: list[Any]
    kwargs: dict[str, Any]
    enabled: bool
    source: str = Field(description="'yaml' (from a tasks file) or 'api'")
    description: str | None
    misfire_policy: str
    misfire_grace_seconds: float | None
    max_catchup: int
    overlap: str
    skipped_runs: int = Field(description="Fire times skipped (misfire or overlap), exactly")
    next_run_at: dt.datetime | None
    last_run_at: dt.datetime | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None

    @classmethod
    def of(cls, schedule: Schedule) -> TaskRead:
        """The read model of a `Schedule`."""
        return cls(
            id=schedule.id,
            name=schedule.name,
            function=schedule.function,
            cron=schedule.cron,
            interval=schedule.interval_seconds,
            timezone=schedule.timezone,
            args=schedule.args,
            kwargs=schedule.kwargs,
            enabled=schedule.enabled,
            source=schedule.source,
            description=schedule.description,
            misfire_policy=schedule.misfire_policy,
            misfire_grace_seconds=schedule.misfire_grace_seconds,
            max_catchup=schedule.max_catchup,
            overlap=schedule.overlap,
            skipped_runs=schedule.skipped_runs,
            next_run_at=schedule.next_run_at,
            last_run_at=schedule.last_run_at,
            created_at=schedule.created_at,
            updated_at=schedule.updated_at,
        )
