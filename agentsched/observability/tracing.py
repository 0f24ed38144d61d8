"""OpenTelemetry spans of enqueue, each run attempt and the event bus, when enabled.

Tracing is on when all of these hold, checked cheaply on each span:
- `AGENTSCHED_TRACING` is true (the default);
- the OpenTelemetry SDK is installed (`pip install agentsched[otel]`): without it this
  module imports nothing from `opentelemetry` and every call returns at once;
- the user configured a tracer provider (their own `set_tracer_provider`, or
  `opentelemetry-instrument` reading the standard `OTEL_*` variables).

The trace context travels in W3C form (`traceparent`, `tracestate`): `enqueue` stores it
in the execution's metadata (so an execution names its trace) and a copy rides in the
arq job payload under `tc`, which the worker's deserializer takes out before arq reads
the payload; each attempt's span is then a child of the enqueue span, retries included.
An event carries it in its stream entry beside the event, as field `tp`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any

from agentsched.serialization import dumps

TRACER_NAME = "agentsched"
CARRIER_KEYS = ("traceparent", "tracestate")
PAYLOAD_KEY = "tc"

_otel: Any = None  # None: not looked for yet; False: off; else the imported API modules
# The carrier of the job being run: set by the deserializer inside arq's run_job, which
# creates the job's task afterwards, so the task's context starts with it.
incoming: ContextVar[dict[str, str] | None] = ContextVar("agentsched_trace", default=None)


class _Api:
    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, StatusCode

        self.trace, self.propagate, self.context = trace, propagate, context
        self.unset = (NoOpTracerProvider, ProxyTracerProvider)
        self.error = StatusCode.ERROR
        self.kind = trace.SpanKind
        self._provider: Any = None
        self._tracer: Any = None

    def tracer(self) -> Any:
        provider = self.trace.get_tracer_provider()
        if provider is self._provider:
            return self._tracer
        if isinstance(provider, self.unset):
            return None  # nobody configured tracing: spans would be dropped anyway
        # An SDK provider builds a new Tracer per get_tracer(): keep one per provider.
        self._provider, self._tracer = provider, provider.get_tracer(TRACER_NAME)
        return self._tracer


def configure(enabled: bool) -> None:
    """Allow or forbid spans in this process (`AGENTSCHED_TRACING`)."""
    global _otel
    if not enabled:
        _otel = False
    elif _otel is False or _otel is None:
        _otel = _Api() if _sdk_installed() else False


def _sdk_installed() -> bool:
    try:  # finding a submodule imports its parent: absent, that raises
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except (ImportError, ValueError):
        return False


def _tracer() -> Any:
    if _otel is None:
        from agentsched.settings import get_settings

        configure(get_settings().tracing)
    return _otel.tracer() if _otel else None


def available() -> bool:
    """True when spans are recorded now (SDK installed, enabled, a provider set)."""
    return _tracer() is not None


# --- enqueue ----------------------------------------------------------------------------
def start_enqueue(function: str, app: str, metadata: dict[str, Any], *, root: bool = False) -> Any:
    """Start `agentsched.enqueue <function>` and put its context into `metadata`.

    The span is a child of the current span, or with `root` (a scheduled run) the
    first span of a trace of its own, whatever the caller's context.
    """
    tracer = _tracer()
    if tracer is None:
        return None
    span = tracer.start_span(
        f"agentsched.enqueue {function}",
        context=_otel.context.Context() if root else None,
        kind=_otel.kind.PRODUCER,
        attributes={"agentsched.app": app, "agentsched.function": function},
    )
    carrier: dict[str, str] = {}
    _otel.propagate.inject(carrier, context=_otel.trace.set_span_in_context(span))
    metadata.update(carrier)
    return span


def end(span: Any, exc: BaseException | None = None, **attributes: Any) -> None:
    """End a span from this module, recording `exc` on it when given."""
    if span is None:
        return
    for name, value in attributes.items():
        span.set_attribute(f"agentsched.{name}", value)
    if exc is not None:
        span.record_exception(exc)
        span.set_status(_otel.error, f"{type(exc).__name__}: {exc}"[:200])
    span.end()


def job_serializer(metadata: Mapping[str, Any]) -> Callable[[dict[str, Any]], bytes]:
    """arq's payload serializer for a job: plain JSON, plus the trace context if any."""
    carrier = {k: metadata[k] for k in CARRIER_KEYS if isinstance(metadata.get(k), str)}
    if not carrier:
        return dumps
    return lambda data: dumps({**data, PAYLOAD_KEY: carrier})


def take_context(data: dict[str, Any]) -> None:
    """In the worker's deserializer: remember the job's trace context for its run."""
    carrier = data.pop(PAYLOAD_KEY, None)
    incoming.set(carrier if isinstance(carrier, dict) else None)


# --- spans made current: a run attempt, a handled event --------------------------------
class Current:
    """A span that is the current one (so the user's own spans nest) until `end`."""

    __slots__ = ("span", "token")

    def __init__(self, name: str, carrier: Mapping[str, str] | None, attributes: Any) -> None:
        self.span: Any = None
        self.token: Token[Any] | None = None
        tracer = _tracer()
        if tracer is None:
            return
        parent = _otel.propagate.extract(carrier) if carrier else None
        kind = _otel.kind.CONSUMER
        self.span = tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        self.token = _otel.context.attach(_otel.trace.set_span_in_context(self.span))

    def end(self, status: str, exc: BaseException | None = None) -> None:
        if self.span is None:
            return
        if self.token is not None:
            _otel.context.detach(self.token)
            self.token = None
        end(self.span, exc, status=status)
        self.span = None


def run_span(function: str, app: str, execution_id: str, attempt: int) -> Current:
    """`agentsched.run <function>` around one attempt, a child of its enqueue span."""
    if _otel is False:
        return _OFF
    attributes = {
        "agentsched.app": app,
        "agentsched.function": function,
        "agentsched.execution_id": execution_id,
        "agentsched.attempt": attempt,
    }
    return Current(f"agentsched.run {function}", incoming.get(), attributes)


def handle_span(event_type: str, agent: str, traceparent: str | None) -> Current:
    """`agentsched.handle <type>` around an event's callbacks, a child of its publish span."""
    if _otel is False:
        return _OFF
    carrier = {"traceparent": traceparent} if traceparent else None
    attributes = {"agentsched.app": agent, "agentsched.event_type": event_type}
    return Current(f"agentsched.handle {event_type}", carrier, attributes)


# --- publishing an event ------------------------------------------------------------------
def start_publish(event_type: str, agent: str) -> tuple[Any, str | None]:
    """Start `agentsched.publish <type>`; (span, traceparent for the stream entry)."""
    tracer = _tracer()
    if tracer is None:
        return None, None
    span = tracer.start_span(
        f"agentsched.publish {event_type}",
        kind=_otel.kind.PRODUCER,
        attributes={"agentsched.app": agent, "agentsched.event_type": event_type},
    )
    carrier: dict[str, str] = {}
    _otel.propagate.inject(carrier, context=_otel.trace.set_span_in_context(span))
    return span, carrier.get("traceparent")


_OFF = Current.__new__(Current)  # tracing off: one shared span-less object, nothing allocated
_OFF.span = _OFF.token = None
