"""The logging rules of agentsched processes (a leaf: imports nothing of agentsched).

* agentsched's own lines (``agentsched.*``: scheduler decisions, recoveries, outages)
  reach the worker's output at ``AGENTSCHED_LOG_LEVEL``, even under plain
  ``arq agentsched.WorkerSettings``, whose logging setup only gives arq's logger a
  handler. A fallback handler prints them while the root logger has none; once the
  application configures logging (a dictConfig with a root handler), they go there.
* Argument values are never logged, at any level. arq's job-start line
  (``→ <id>:<function>(<args>)``, shown at DEBUG) is rewritten to keep the execution
  id, the function and the keyword names only: ``sec.echo(…, api_key=…, password=…)``.
"""

from __future__ import annotations

import logging
import re

__all__ = ["ArgumentRedactor", "configure_logging", "keep_argument_values_out"]

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_ARQ_START = "%6.2fs → %s(%s)%s"  # arq.worker's job-start line; its 3rd value holds the args
_KEYWORD = re.compile(r"(?:^|, )([A-Za-z_][A-Za-z0-9_]*)=")


def redact_arguments(rendered: str) -> str:
    """`a, b, key='v'` (arq's rendering) as `…, key=…`: names only, never a value."""
    if not rendered:
        return ""
    names = [f"{name}=…" for name in _KEYWORD.findall(rendered)]
    positional = not _KEYWORD.match(rendered)
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


class _UntilConfigured(logging.StreamHandler):  # type: ignore[type-arg]
    """Prints agentsched's records only while the root logger has no handler."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def configure_logging(level: str) -> None:
    """Apply the rules above for a process logging at `level` (idempotent)."""
    logger = logging.getLogger("agentsched")
    logger.setLevel(level)
    if not any(isinstance(h, _UntilConfigured) for h in logger.handlers):
        handler = _UntilConfigured()
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        logger.addHandler(handler)
    keep_argument_values_out()


def keep_argument_values_out() -> None:
    """Install `ArgumentRedactor` on arq's worker logger (idempotent)."""
    arq_worker = logging.getLogger("arq.worker")
    if not any(isinstance(f, ArgumentRedactor) for f in arq_worker.filters):
        arq_worker.addFilter(ArgumentRedactor())
