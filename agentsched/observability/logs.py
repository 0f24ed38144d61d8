"""Log lines that say which app, execution, function and attempt they are about.

`Formatter` writes either one JSON object per line (`AGENTSCHED_LOG_FORMAT=json`: time,
level, logger, message, app, and `execution_id`, `function`, `attempt` inside a task's
run) or the usual text line with those fields appended briefly. The worker binds the
execution around each attempt (`bind` / `unbind`); plain-def tasks run in a thread
that inherits the binding. config/logging.yaml names this formatter; `install` puts it
on the process's handlers when JSON is asked for and none uses it yet.

Argument values are never logged: agentsched's own messages name functions and ids
only, and `install` blanks the argument list out of arq's per-job line (shown at DEBUG).
"""

from __future__ import annotations

import datetime as dt
import logging
from contextvars import ContextVar, Token
from typing import Any

import orjson

from agentsched.errors import ConfigError

# (execution id, function, attempt) of the attempt running in this context.
_current: ContextVar[tuple[str, str, int] | None] = ContextVar("agentsched_log", default=None)
_ARQ_START = "→"  # arq.worker's "t → ref(args) extra" line carries argument values
REDACTED = "…"


def bind(execution_id: str, function: str, attempt: int) -> Token[tuple[str, str, int] | None]:
    return _current.set((execution_id, function, attempt))


def unbind(token: Token[tuple[str, str, int] | None]) -> None:
    _current.reset(token)


def _settings() -> tuple[str, str]:
    from agentsched.settings import get_settings

    try:
        settings = get_settings()
    except ConfigError:
        return "text", ""
    return settings.log_format, settings.app


class Formatter(logging.Formatter):
    """Text or JSON lines with the agentsched context; usable from a dictConfig (`()`)."""

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Any = "%",
        validate: bool = True,
        *,
        json: bool | None = None,
        app: str | None = None,
    ) -> None:
        super().__init__(fmt, datefmt, style, validate)
        log_format, default_app = _settings()
        self.json = (log_format == "json") if json is None else json
        self.app = default_app if app is None else app

    def context(self, record: logging.LogRecord) -> dict[str, Any]:
        fields: dict[str, Any] = {"app": getattr(record, "app", None) or self.app}
        bound = _current.get()
        if bound is not None:
            fields["execution_id"], fields["function"], fields["attempt"] = bound
        for name in ("execution_id", "function", "attempt"):  # an explicit `extra=` wins
            value = getattr(record, name, None)
            if value is not None:
                fields[name] = value
        return fields

    def format(self, record: logging.LogRecord) -> str:
        if not self.json:
            line = super().format(record)
            fields = self.context(record)
            brief = [str(fields["app"])] if fields["app"] else []
            if "execution_id" in fields:
                brief.append(
                    f"{fields['function']} {str(fields['execution_id'])[:8]} #{fields['attempt']}"
                )
            return f"{line} [{' '.join(brief)}]" if brief else line
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.context(record),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


class HideArqArguments(logging.Filter):
    """Blanks the argument list out of arq's per-job start line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            isinstance(record.msg, str)
            and _ARQ_START in record.msg
            and isinstance(record.args, tuple)
            and len(record.args) >= 3
        ):
            args = list(record.args)
            args[2] = REDACTED
            record.args = tuple(args)
        return True


def install(log_format: str, app: str) -> None:
    """Hide arq's argument values; with JSON, format every handler of root and arq with it.

    A root logger without handlers (arq's default logging config) gets one on stderr,
    so agentsched's own lines come out as JSON too.
    """
    arq_worker = logging.getLogger("arq.worker")
    if not any(isinstance(f, HideArqArguments) for f in arq_worker.filters):
        arq_worker.addFilter(HideArqArguments())
    if log_format != "json":
        return
    root = logging.getLogger()
    if not root.handlers:  # arq's default config gives handlers to arq's loggers only
        root.addHandler(logging.StreamHandler())
    for name in ("", "arq", "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            current = handler.formatter
            if not (isinstance(current, Formatter) and current.json):
                handler.setFormatter(Formatter(json=True, app=app))
