"""agentsched: async task queue, scheduler and event bus for agent platforms.

`import agentsched` reads no environment and opens no connection; `WorkerSettings`
is built on first access, which is what `arq agentsched.WorkerSettings` does.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from agentsched.errors import AgentschedError
from agentsched.execution import Execution
from agentsched.jobs.progress import progress
from agentsched.jobs.queue import TaskQueue
from agentsched.registry import task
from agentsched.settings import Settings, get_settings
from agentsched.status import ErrorKind, TaskStatus

if TYPE_CHECKING:
    from agentsched.events import EventBus, EventMessage

__all__ = [
    "AgentschedError",
    "ErrorKind",
    "EventBus",
    "EventMessage",
    "Execution",
    "Settings",
    "TaskQueue",
    "TaskStatus",
    "WorkerSettings",
    "get_settings",
    "progress",
    "task",
]

try:  # the installed distribution's version: pyproject.toml is the one place it is set
    __version__ = version("agentsched")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

_worker_settings: type | None = None


def __getattr__(name: str) -> Any:
    global _worker_settings
    if name == "WorkerSettings":
        if _worker_settings is None:
            from agentsched.worker import worker_settings_for_cli

            _worker_settings = worker_settings_for_cli()
        return _worker_settings
    if name in ("EventBus", "EventMessage"):
        from agentsched import events

        return getattr(events, name)
    raise AttributeError(f"module 'agentsched' has no attribute {name!r}")
