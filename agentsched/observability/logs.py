"""Log lines that say which app, execution, function and attempt they are about.

`Formatter` writes either one JSON object per line (`AGENTSCHED_LOG_FORMAT=json`: time,
level, logger, message, app, and `execution_id`, `function`, `attempt` inside a task's
run) or the usual text line with those fields appended briefly. The worker binds the
execution around each attempt (`bind` / `unbind`); plain-def tasks run in a thread
that inherits the binding. config/logging.yaml names this formatter; `install` puts it
on the process's handlers when JSON is asked for and none uses it yet.

The logging rules of agentsched processes:

* agentsched's own lines (``agentsched.*``: scheduler decisions, recoveries, outages)
  reach the worker's output at ``AGENTSCHED_LOG_LEVEL``, even under plain
  ``arq agentsched.WorkerSettings``, whose logging setup only gives arq's logger a
  handler (`configure_logging`). A fallback handler prints them while the root logger
  has none; once the application configures logging, they go there.
* Argument values are never logged, at any level. agentsched's own messages name
  functions and ids only, and arq's job-start line (``→ <id>:<function>(<args>)``) is
  rewritten to keep the execution id, the function and the keyword names only:
  ``sec.echo(…, api_key=…, password=…)`` (`ArgumentRedactor`).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from contextvars import ContextVar, Token
from typing import Any

import orjson

from agentsched.errors import ConfigError

# (execution id, function, attempt) of the attempt running in this context.
_current: ContextVar[tuple[str, str, int] | None] = ContextVar("agentsched_log", default=None)
_ARQ_START = "%6.2fs → %s(%s)%s"  # arq.worker's job-start line; its 3rd value holds the args
_KEYWORD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)=")
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


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


def error_type(error: str) -> str:
    """The exception's name from a stored error (`Type: message`, then a traceback): a
    task's message may hold its argument values, so log lines name the type only (the
    message and traceback stay in the execution's record)."""
    head = error.split(":", 1)[0].strip()
    return head.splitlines()[0] if head else "error"


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


def _top_level_items(rendered: str) -> list[str]:
    """arq's rendering split at its separators: commas outside brackets and quotes.

    arq writes `repr(arg), ..., name=repr(value), ...` and cuts the whole at 80
    characters with "…"; a value's repr may hold commas, `name=` and quotes of its own,
    so only a comma at depth 0 outside a string literal ends an item. A cut leaves the
    last item unfinished (inside a string, say), which changes nothing before it.
    """
    items, depth, quote, escaped, start = [], 0, "", False, 0
    for i, char in enumerate(rendered):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            items.append(rendered[start:i])
            start = i + 1
    items.append(rendered[start:])
    return items


def redact_arguments(rendered: str) -> str:
    """`a, b, key='v'` (arq's rendering) as `…, key=…`: names only, never a value."""
    if not rendered:
        return ""
    names, positional = [], False
    for item in _top_level_items(rendered):
        keyword = _KEYWORD.match(item)
        if keyword is None:
            positional = True  # a value, or a name the cut at 80 characters left unfinished
        else:
            names.append(f"{keyword.group(1)}=…")
    return ", ".join((["…"] if positional else []) + names)


class ArgumentRedactor(logging.Filter):
    """Drops argument values from arq's job-start line (installed on ``arq.worker``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _ARQ_START and isinstance(record.args, tuple) and len(record.args) == 4:
            waited, ref, rendered, extra = record.args
            record.args = (waited, ref, redact_arguments(str(rendered)), extra)
        elif "→" in str(record.msg):  # an arq release changed the line: keep values out
            record.msg, record.args = "job started (arguments not logged)", ()
        return True


def keep_argument_values_out() -> None:
    """Install `ArgumentRedactor` on arq's worker logger (idempotent)."""
    arq_worker = logging.getLogger("arq.worker")
    if not any(isinstance(f, ArgumentRedactor) for f in arq_worker.filters):
        arq_worker.addFilter(ArgumentRedactor())


class _UntilConfigured(logging.StreamHandler):  # type: ignore[type-arg]
    """Prints agentsched's records only while the root logger has no handler."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def configure_logging(level: str) -> None:
    """agentsched's own lines at `level`, shown even without a root handler (idempotent)."""
    logger = logging.getLogger("agentsched")
    logger.setLevel(level)
    if not any(isinstance(h, _UntilConfigured) for h in logger.handlers):
        handler = _UntilConfigured()
        handler.setFormatter(Formatter(_FORMAT, "%H:%M:%S"))  # with the execution's fields
        logger.addHandler(handler)
    keep_argument_values_out()


def install(log_format: str, app: str) -> None:
    """Hide arq's argument values; with JSON, format every handler of root and arq with it.

    A root logger without handlers (arq's default logging config) gets one on stderr,
    so agentsched's own lines come out as JSON too.
    """
    keep_argument_values_out()
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
