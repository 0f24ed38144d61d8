"""A user's tracing set-up, imported as a task module by worker subprocesses of
test_tracing.py: an SDK provider with the in-memory exporter, whose spans are written
as JSON to $OTEL_TEST_SPANS_FILE when the process exits."""

from __future__ import annotations

import atexit
import json
import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)


@atexit.register
def _write_spans() -> None:
    spans = [json.loads(span.to_json()) for span in exporter.get_finished_spans()]
    with open(os.environ["OTEL_TEST_SPANS_FILE"], "w") as out:
        json.dump(spans, out)
