"""agentsched: async task queue, scheduler and event bus for agent platforms.

`import agentsched` reads no environment, opens no connection and imports nothing
heavy: every public name is loaded on first access (so `agentsched --help` answers
at once), and `WorkerSettings` is built on first access, which is what
`arq agentsched.WorkerSettings` does.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from agentsched.errors import AgentschedError

if TYPE_CHECKING:
    from agentsched.events import EventBus, EventMessage
    from agentsched.execution import Execution
    from agentsched.jobs.progress import progress
    from agentsched.jobs.queue import TaskQueue
    from agentsched.registry import task
    from agentsched.settings import Settings, get_settings
    from agentsched.status import ErrorKind, TaskStatus

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

# Where each lazily loaded public name lives.
_LAZY = {
    "ErrorKind": "agentsched.status",
    "EventBus": "agentsched.events",
    "EventMessage": "agentsched.events",
    "Execution": "agentsched.execution",
    "Settings": "agentsched.settings",
    "TaskQueue": "agentsched.jobs.queue",
    "TaskStatus": "agentsched.status",
    "get_settings": "agentsched.settings",
    "progress": "agentsched.jobs.progress",
    "task": "agentsched.registry",
}

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
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'agentsched' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
