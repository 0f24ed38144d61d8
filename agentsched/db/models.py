"""SQLAlchemy tables: `scheduled_tasks` and `task_executions` (names fixed by DESIGN.md)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        moment: dt.datetime = value
        return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class ScheduledTask(Base):
    """A cron or interval schedule of a registered task, from tasks.yaml or the API."""

    __tablename__ = "scheduled_tasks"
    __table_args__ = (
        UniqueConstraint("app", "name", name="uq_scheduled_tasks_app_name"),
        # The scheduler tick's query: this app's enabled schedules due by now.
        Index("ix_scheduled_tasks_due", "app", "enabled", "next_run_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    app: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(200))
    function: Mapped[str] = mapped_column(String(512))
    cron: Mapped[str | None] = mapped_column(String(200), nullable=True)
    interval_seconds: Mapped[float | None] = mapped_column(nullable=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    args: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[str] = mapped_column(String(8), default="api")
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    misfire_policy: Mapped[str] = mapped_column(String(16), default="run_once")
    misfire_grace_seconds: Mapped[float | None] = mapped_column(nullable=True)
    max_catchup: Mapped[int] = mapped_column(Integer, default=10)
    overlap: Mapped[str] = mapped_column(String(8), default="skip")
    skipped_runs: Mapped[int] = mapped_column(Integer, default=0)
    next_run_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    last_run_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=_now, onupdate=_now)


class TaskExecution(Base):
    """One execution of a task, from enqueue to its terminal status."""

    __tablename__ = "task_executions"
    __table_args__ = (
        UniqueConstraint("task_id", "scheduled_for", name="uq_task_executions_fire"),
        Index("ix_task_executions_app_enqueued", "app", "enqueued_at"),
        Index("ix_task_executions_app_status", "app", "status"),
        Index("ix_task_executions_app_function", "app", "function"),
        # History retention deletes by end time; lists sort by it too. On PostgreSQL it
        # covers the dashboard's per-minute figures: index-only scans (migration step 6).
        Index(
            "ix_task_executions_app_finished",
            "app",
            "finished_at",
            postgresql_include=["status", "attempt", "started_at", "enqueued_at"],
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    task_id: Mapped[str | None] = mapped_column(
        String(36),
        ForeignKey("scheduled_tasks.id", ondelete="SET NULL"),
        nullable=True,
        index=True,
    )
    app: Mapped[str] = mapped_column(String(128))
    function: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16))
    args: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    result: Mapped[Any] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    max_tries: Mapped[int] = mapped_column(Integer, default=1)
    scheduled_for: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    # Order of the snapshot in Redis: a row only ever moves to a higher seq.
    seq: Mapped[int] = mapped_column(Integer, default=0)
    # The task's last `agentsched.progress` report (migration step 4).
    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # When a queued execution is due (its delay, eta or retry backoff), so the
    # reconciler can put a job Redis lost back at the right time (migration step 5).
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
