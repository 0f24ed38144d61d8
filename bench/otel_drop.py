"""A tracer provider whose spans go nowhere: what tracing costs agentsched, not a collector.

`install()` sets it as the process' provider (once per process; OpenTelemetry allows one).
bench/bench_tasks.py calls it in a worker started with `BENCH_OTEL=drop`, as a user's
own start-up code or `opentelemetry-instrument` would configure tracing.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

ENV = "BENCH_OTEL"


class DropExporter(SpanExporter):
    """Exports nothing (the batch processor still batches and hands spans over)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def install() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DropExporter()))
    trace.set_tracer_provider(provider)
    return provider
