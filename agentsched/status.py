"""Execution statuses and failure kinds (fixed values, see DESIGN.md)."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Where an execution is in its life.

    queued -> running -> success | failed; queued | running -> cancelled;
    a failed attempt with retries left goes back to queued with attempt + 1.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED})


class ErrorKind(StrEnum):
    """Why a `failed` execution failed."""

    EXCEPTION = "exception"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    EXPIRED = "expired"
    DESERIALIZATION = "deserialization"
    UNKNOWN_FUNCTION = "unknown_function"
