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
An event carries it in its stream entry beside the event, as fields `tp` and `ts`.

The carrier is written and read here, from the span's own ids, not through the global
propagator: it is agentsched's own record (a user's B3 or Jaeger propagator would
write keys nobody reads back), and it costs a fraction of `propagate.inject/extract`.
Two spans a job is the price of tracing; everything around them is kept small: the
attributes are given at the start (samplers see them), once.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any

from agentsched.serialization import dumps

TRACER_NAME = "agentsched"
CARRIER_KEYS = ("traceparent", "tracestate")
PAYLOAD_KEY = "tc"
# version-trace id-span id-flags, then the end or (a later version's) more fields
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-|\Z)")
_NAMES_MAX = 4096  # span names and constant attributes kept (event types are open-ended)

_otel: Any = None  # None: not looked for yet; False: off; else the imported API modules
# The carrier of the job being run: set by the deserializer inside arq's run_job, which
# creates the job's task afterwards, so the task's context starts with it.
incoming: ContextVar[dict[str, str] | None] = ContextVar("agentsched_trace", default=None)


class _Api:
    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import (
            NonRecordingSpan,
            NoOpTracerProvider,
            ProxyTracerProvider,
            SpanContext,
            StatusCode,
            TraceFlags,
            TraceState,
        )

        self.trace = trace
        self.unset = (NoOpTracerProvider, ProxyTracerProvider)
        self.error = StatusCode.ERROR
        self.producer, self.consumer = trace.SpanKind.PRODUCER, trace.SpanKind.CONSUMER
        self.new_trace = context.Context()  # a root span's parent: nothing (read, never changed)
        self.attach, self.detach = context.attach, context.detach
        self.in_context = trace.set_span_in_context
        self.remote_span = NonRecordingSpan
        self.span_context, self.state = SpanContext, TraceState
        self.flags = [TraceFlags(value) for value in range(256)]  # built once, not per parent
        # (kind, subject, app) -> (span name, the attributes every such span has)
        self.names: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}
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

    def named(self, kind: str, subject: str, app: str, key: str) -> tuple[str, dict[str, Any]]:
        """`agentsched.<kind> <subject>` and its constant attributes, built once each."""
        hit = self.names.get((kind, subject, app))
        if hit is None:
            if len(self.names) >= _NAMES_MAX:
                self.names.clear()
            attributes = {"agentsched.app": app, f"agentsched.{key}": subject}
            hit = self.names[kind, subject, app] = (f"agentsched.{kind} {subject}", attributes)
        return hit

    def parent(self, carrier: Mapping[str, str] | None) -> Any:
        """The context whose span is the remote parent `carrier` names (None: none)."""
        if not carrier:
            return None
        ids = parse_traceparent(carrier.get("traceparent"))
        if ids is None:
            return None
        header = carrier.get("tracestate")
        state = self.state.from_header([header]) if header else None
        remote = self.span_context(ids[0], ids[1], True, self.flags[ids[2]], state)
        return self.in_context(self.remote_span(remote))


def parse_traceparent(value: Any) -> tuple[int, int, int] | None:
    """(trace id, span id, flags) of a W3C `traceparent`, or None if it is not one."""
    found = _TRACEPARENT.match(value) if isinstance(value, str) else None
    if found is None:
        return None
    version = found[1]
    if version == "ff" or (version == "00" and found.end() != len(value)):
        return None  # version 00 has exactly four fields
    trace_id, span_id = int(found[2], 16), int(found[3], 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(found[4], 16)


def carrier_of(span: Any) -> dict[str, str]:
    """The W3C carrier (`traceparent`, and `tracestate` when not empty) of `span`."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return {}
    carrier = {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
    if ctx.trace_state:
        carrier["tracestate"] = ctx.trace_state.to_header()
    return carrier


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
def active() -> bool:
    """Whether spans would be recorded now (a tracer provider is set)."""
    return _tracer() is not None


def start_enqueue(
    function: str,
    app: str,
    metadata: dict[str, Any],
    *,
    root: bool = False,
    execution_id: str | None = None,
) -> Any:
    """Start `agentsched.enqueue <function>` and put its context into `metadata`.

    The span is a child of the current span, or with `root` (a scheduled run) the
    first span of a trace of its own, whatever the caller's context. An
    `execution_id` known already is an attribute from the start (cheaper than at `end`).
    """
    tracer = _tracer()
    if tracer is None:
        return None
    name, attributes = _otel.named("enqueue", function, app, "function")
    if execution_id is not None:  # a copy: the named attributes are shared
        attributes = {**attributes, "agentsched.execution_id": execution_id}
    span = tracer.start_span(name, _otel.new_trace if root else None, _otel.producer, attributes)
    metadata.update(carrier_of(span))
    return span


def end(span: Any, exc: BaseException | None = None, **attributes: Any) -> None:
    """End a span from this module, recording `exc` on it when given."""
    if span is None:
        return
    if attributes and span.is_recording():
        span.set_attributes({f"agentsched.{name}": value for name, value in attributes.items()})
    _finish(span, exc)


def _finish(span: Any, exc: BaseException | None) -> None:
    if exc is not None:
        span.record_exception(exc)
        span.set_status(_otel.error, f"{type(exc).__name__}: {exc}"[:200])
    span.end()


def job_serializer(metadata: Mapping[str, Any]) -> Callable[[dict[str, Any]], bytes]:
    """arq's payload serializer for a job: plain JSON, plus the trace context if any."""
    if "traceparent" not in metadata and "tracestate" not in metadata:
        return dumps  # no trace context (tracing off, or no provider): nothing to add
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
    """A span that is the current one (so the user's own spans nest) until `end`, or
    until the `with` block it is used in ends (status failed if an exception left it)."""

    __slots__ = ("span", "token")

    def __init__(
        self, tracer: Any, name: str, carrier: Mapping[str, str] | None, attributes: Any
    ) -> None:
        parent = _otel.parent(carrier)
        self.span: Any = tracer.start_span(name, parent, _otel.consumer, attributes)
        # Made current in the current context (which keeps whatever else it holds).
        self.token: Token[Any] | None = _otel.attach(_otel.in_context(self.span))

    def end(self, status: str, exc: BaseException | None = None) -> None:
        if self.span is None:
            return
        if self.token is not None:
            _otel.detach(self.token)
            self.token = None
        span, self.span = self.span, None
        span.set_attribute("agentsched.status", status)  # one attribute: no dict to build
        _finish(span, exc)

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        self.end("failed" if exc is not None else "success", exc)


def run_span(function: str, app: str, execution_id: str, attempt: int) -> Current:
    """`agentsched.run <function>` around one attempt, a child of its enqueue span."""
    tracer = _tracer()
    if tracer is None:  # off, or no provider set: nothing built
        return _OFF
    name, constant = _otel.named("run", function, app, "function")
    attributes = {
        **constant,
        "agentsched.execution_id": execution_id,
        "agentsched.attempt": attempt,
    }
    return Current(tracer, name, incoming.get(), attributes)


def handle_span(event_type: str, agent: str, carrier: Mapping[str, str] | None) -> Current:
    """`agentsched.handle <type>` around an event's handling, a child of its publish span."""
    tracer = _tracer()
    if tracer is None:
        return _OFF
    name, attributes = _otel.named("handle", event_type, agent, "event_type")
    return Current(tracer, name, carrier, {**attributes})  # a copy: the named ones are shared


# --- publishing an event ------------------------------------------------------------------
def start_publish(event_type: str, agent: str) -> tuple[Any, dict[str, str]]:
    """Start `agentsched.publish <type>`; (span, its carrier for the stream entry)."""
    tracer = _tracer()
    if tracer is None:
        return None, {}
    name, attributes = _otel.named("publish", event_type, agent, "event_type")
    span = tracer.start_span(name, None, _otel.producer, {**attributes})  # a copy, as above
    return span, carrier_of(span)


_OFF = Current.__new__(Current)  # tracing off: one shared span-less object, nothing allocated
_OFF.span = _OFF.token = None
