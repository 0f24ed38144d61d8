"""Every exception agentsched raises, in one place.

The hierarchy (the REST router maps each branch to one HTTP status, in one place)::

    AgentschedError
     ├── ConfigError              a bad AGENTSCHED_* value or config file    (start-up stops)
     ├── ServiceUnavailable       Redis or the database cannot be reached    (503)
     │    └── CorruptRecord       an execution hash in Redis cannot be read
     ├── InvalidInput             a user's value is wrong; names the field   (422)
     │    ├── UnknownFunction     a task name that is not registered
     │    ├── InvalidSchedule     a bad cron, interval, timezone or schedule
     │    ├── InvalidEvent        a bad event type, agent name or payload
     │    └── TasksFileError      a tasks.yaml problem; names file, task and field
     ├── NotFound                 an id that does not exist for this app     (404)
     ├── Conflict                 a duplicate or a state that forbids it     (409)
     │    └── AlreadyFinished     cancel of an execution already terminal
     ├── ExecutionError           get_result() of an execution that did not succeed
     │    ├── ExecutionFailed
     │    └── ExecutionCancelled
     └── ResultTimeout            get_result() waited longer than its timeout

Each message is one line that says what is wrong and where, never a traceback.
"""

from __future__ import annotations

from typing import Any


class AgentschedError(Exception):
    """Base class of every agentsched error."""


class ConfigError(AgentschedError):
    """A setting or configuration file is invalid."""


class ServiceUnavailable(AgentschedError):
    """Redis or the database cannot be reached.

    The message names the service and its URL with the password masked.
    """

    def __init__(self, service: str, url: str, reason: str) -> None:
        self.service = service
        self.url = url
        super().__init__(f"{service} unreachable at {url}: {reason}")


class CorruptRecord(ServiceUnavailable):
    """An execution's Redis hash holds bytes that are not UTF-8 or values out of range.

    Readers fall back to the SQL row; without one the API answers 503, never a 500.
    """

    def __init__(self, execution_id: str, reason: str) -> None:
        self.service, self.url, self.execution_id = "Redis", "", execution_id
        AgentschedError.__init__(
            self, f"the Redis record of execution {execution_id[:64]!r} is unreadable: {reason}"
        )


class InvalidInput(AgentschedError):
    """A value supplied by a user is invalid; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class UnknownFunction(InvalidInput):
    """A task name that is not registered with `@task` in an imported module."""

    def __init__(self, name: str, field: str = "function") -> None:
        self.name = name
        shown = name if len(name) <= 200 else name[:200] + "..."
        super().__init__(field, f"{shown!r} is not a registered task")


class InvalidSchedule(InvalidInput):
    """A cron expression, interval, timezone or schedule shape is invalid."""


class InvalidEvent(InvalidInput):
    """An event type, agent name or payload is invalid."""


class TasksFileError(InvalidInput):
    """A tasks.yaml file is invalid; the message names the file, the task and the field."""

    def __init__(self, path: str, message: str, task: str | None = None, field: str = "") -> None:
        self.path = path
        self.task = task
        where = path + (f": task {task!r}" if task else "")
        super().__init__(field or "tasks_file", message)
        self.args = (f"{where}: {field + ': ' if field else ''}{message}",)

    def __str__(self) -> str:
        return str(self.args[0])


class NotFound(AgentschedError):
    """No such execution or schedule for this app."""

    def __init__(self, kind: str, ident: Any) -> None:
        self.kind = kind
        self.ident = ident
        super().__init__(f"{kind} {str(ident)[:100]!r} not found")


class Conflict(AgentschedError):
    """The request conflicts with existing state (a duplicate name, a finished execution)."""


class AlreadyFinished(Conflict):
    """The execution is already in a terminal state."""

    def __init__(self, execution_id: str, status: str) -> None:
        self.execution_id = execution_id
        self.status = status
        super().__init__(f"execution {execution_id} already finished with status {status}")


class ExecutionError(AgentschedError):
    """Raised by `TaskQueue.get_result` when an execution did not succeed."""

    def __init__(self, execution_id: str, status: str, error: str | None) -> None:
        self.execution_id = execution_id
        self.status = status
        self.error = error
        first = (error or "").strip().splitlines()[:1]
        super().__init__(f"execution {execution_id} {status}" + (f": {first[0]}" if first else ""))


class ExecutionFailed(ExecutionError):
    """The execution ended `failed`."""


class ExecutionCancelled(ExecutionError):
    """The execution ended `cancelled`."""


class ResultTimeout(AgentschedError, TimeoutError):
    """The execution did not finish within the timeout given to `get_result`."""
