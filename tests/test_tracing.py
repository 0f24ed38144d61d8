"""OpenTelemetry: one trace from POST /executions through enqueue to the worker's runs.

The API runs in this process with FastAPI's instrumentation; the worker is a real
`arq agentsched.WorkerSettings` subprocess whose task modules include
`tests.otel_worker` (an SDK provider with the in-memory exporter, dumped at exit).
Both sides use the SDK's in-memory exporter; the context crosses through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import propagate, trace
from opentelemetry.context import attach as trace_context_attach
from opentelemetry.context import detach as trace_context_detach
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.util._once import Once
from redis.exceptions import ResponseError

from agentsched import EventBus, EventMessage
from agentsched.api import create_app
from agentsched.jobs.queue import scheduled_execution_id
from agentsched.jobs.runtime import Runtime
from agentsched.observability import tracing
from agentsched.scheduling.service import Scheduler, SchedulerService
from agentsched.settings import Settings
from tests.conftest import subprocess_env
from tests.test_api_support import eventually, serve
from tests.test_worker_process import ROOT, start_worker, stop

ADD = "tests.sample_tasks.add"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """An SDK provider with the in-memory exporter for this module's tests only.

    OTel lets a process set its provider once; like OTel's own test helpers
    (`reset_trace_globals`), the teardown puts the global back, so later test modules
    run untraced, as they would without a provider.
    """
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace.set_tracer_provider(provider)
    yield memory
    provider.shutdown()
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    assert not tracing.available()


def hexid(value: int) -> str:
    return f"0x{value:016x}" if value < 2**64 else f"0x{value:032x}"


async def finished(client: httpx.AsyncClient, ident: str) -> dict[str, Any]:
    async def get() -> dict[str, Any]:
        return dict((await client.get(f"/executions/{ident}")).json())

    return await eventually(get, lambda e: e["status"] in {"success", "failed"}, timeout=20)


async def test_one_trace_from_request_to_worker_runs(
    settings: Settings, exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    spans_file = tmp_path / "worker-spans.json"
    worker = start_worker(
        settings,
        AGENTSCHED_TASK_MODULES="tests.sample_tasks,tests.otel_worker",
        OTEL_TEST_SPANS_FILE=str(spans_file),
    )
    try:
        app = create_app(settings, tasks_files=[])
        FastAPIInstrumentor.instrument_app(app)
        async with serve(app) as client:
            posted = {}
            for function, body in [
                (ADD, {"args": [1, 2]}),
                ("tests.boom", {"kwargs": {"message": "no luck"}}),
                ("tests.flaky", {"args": [str(tmp_path / "flaky"), 1]}),
            ]:
                response = await client.post("/executions", json={"function": function, **body})
                assert response.status_code == 202, response.text
                posted[function] = response.json()
            ends = {f: await finished(client, e["id"]) for f, e in posted.items()}
    finally:
        output = stop(worker)
    assert [e["status"] for e in ends.values()] == ["success", "failed", "success"], output
    assert spans_file.is_file(), output
    local = exporter.get_finished_spans()
    remote = json.loads(spans_file.read_text())

    for function, execution in posted.items():
        enqueue = next(
            s
            for s in local
            if s.name == f"agentsched.enqueue {function}"
            and s.attributes is not None
            and s.attributes["agentsched.execution_id"] == execution["id"]
        )
        request = next(s for s in local if s.context.span_id == enqueue.parent.span_id)  # type: ignore[union-attr]
        assert request.kind is trace.SpanKind.SERVER
        assert request.name == "POST /api/scheduler/executions"
        trace_id = hexid(enqueue.context.trace_id)
        assert ends[function]["metadata"]["traceparent"].split("-")[1] == trace_id[2:]
        runs = sorted(
            (s for s in remote if s["name"] == f"agentsched.run {function}"),
            key=lambda s: s["attributes"]["agentsched.attempt"],
        )
        assert runs, f"no run span of {function}: {[s['name'] for s in remote]}"
        for attempt, run in enumerate(runs, 1):
            assert run["context"]["trace_id"] == trace_id
            assert run["parent_id"] == hexid(enqueue.context.span_id)
            assert run["attributes"]["agentsched.execution_id"] == execution["id"]
            assert run["attributes"]["agentsched.app"] == settings.app
            assert run["attributes"]["agentsched.function"] == function
            assert run["attributes"]["agentsched.attempt"] == attempt

    by_function = {f: [s for s in remote if s["name"] == f"agentsched.run {f}"] for f in posted}
    assert [s["attributes"]["agentsched.status"] for s in by_function[ADD]] == ["success"]
    [boom] = by_function["tests.boom"]
    assert boom["attributes"]["agentsched.status"] == "failed"
    assert boom["status"]["status_code"] == "ERROR"
    assert [e["attributes"]["exception.type"] for e in boom["events"]] == ["ValueError"]
    flaky = sorted(s["attributes"]["agentsched.attempt"] for s in by_function["tests.flaky"])
    assert flaky == [1, 2]
    statuses = [s["attributes"]["agentsched.status"] for s in by_function["tests.flaky"]]
    assert sorted(statuses) == ["failed", "success"]


@pytest.mark.parametrize("absent", ["opentelemetry.sdk", "opentelemetry"])
def test_without_the_sdk_agentsched_imports_no_opentelemetry(
    settings: Settings, absent: str
) -> None:
    """Enqueue and run a job with the SDK (or all of OTel) absent: no opentelemetry module."""
    script = f"""
import asyncio, sys
sys.modules["{absent}"] = None  # as if it were not installed
from arq.worker import create_worker
from agentsched import TaskQueue
from agentsched.worker import build_worker_settings
from agentsched.settings import get_settings

async def main():
    async with TaskQueue() as queue:
        execution = await queue.enqueue("tests.sample_tasks.add", args=[2, 3])
    worker = create_worker(build_worker_settings(get_settings()), burst=True,
                           handle_signals=False)
    await worker.async_run()
    await worker.close()
    async with TaskQueue() as queue:
        assert await queue.get_result(execution.id, timeout=5) == 5
    print(sorted(m for m, mod in sys.modules.items() if mod and m.startswith("opentelemetry")))

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=subprocess_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


async def test_a_handled_event_is_a_child_of_its_publish(
    settings: Settings, exporter: InMemorySpanExporter
) -> None:
    seen: list[str | None] = []
    async with (
        EventBus("tr-sender", settings=settings) as sender,
        EventBus("tr-receiver", settings=settings) as receiver,
    ):

        @receiver.on("scraper.*")
        async def handler(event: EventMessage) -> None:
            inner = trace.get_current_span().get_span_context()
            seen.append(f"{inner.span_id:016x}")

        await receiver.start()

        async def group_ready() -> bool:
            with contextlib.suppress(ResponseError):
                groups = await receiver._client().xinfo_groups(receiver.stream)
                return any(g["name"] == b"tr-receiver" for g in groups)
            return False

        await eventually(group_ready, bool)
        published = await sender.publish("scraper.page_fetched", {"url": "u"})
        await eventually(lambda: asyncio.sleep(0, len(seen)), lambda n: n == 1)
    spans = exporter.get_finished_spans()
    [publish] = [
        s
        for s in spans
        if s.name == "agentsched.publish scraper.page_fetched"
        and s.attributes is not None
        and s.attributes["agentsched.app"] == "tr-sender"
    ]
    [handle] = [
        s
        for s in spans
        if s.name == "agentsched.handle scraper.page_fetched"
        and s.parent
        and s.parent.span_id == publish.context.span_id
    ]
    assert handle.context.trace_id == publish.context.trace_id
    assert handle.attributes is not None and handle.attributes["agentsched.status"] == "success"
    assert seen == [f"{handle.context.span_id:016x}"]  # the callback ran inside it
    assert published.stream_id is not None


async def test_a_scheduled_run_starts_a_trace_of_its_own(
    settings: Settings, exporter: InMemorySpanExporter
) -> None:
    async with Runtime(settings) as runtime:
        scheduler = Scheduler(runtime)
        s = await scheduler.create({"name": "traced", "function": "tests.noop", "interval": "60s"})
        assert s.next_run_at is not None
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("unrelated caller") as caller:
            assert (await SchedulerService(runtime).tick(s.next_run_at)).enqueued == 1
            manual = await scheduler.run_now(s.id)  # not scheduled: a child of the caller
    ident = scheduled_execution_id(s.id, s.next_run_at)
    spans = {
        s.attributes["agentsched.execution_id"]: s
        for s in exporter.get_finished_spans()
        if s.name == "agentsched.enqueue tests.noop" and s.attributes
    }
    scheduled, by_hand = spans[ident], spans[manual.id]
    assert scheduled.parent is None
    assert scheduled.context.trace_id != caller.get_span_context().trace_id
    assert by_hand.parent is not None
    assert by_hand.parent.span_id == caller.get_span_context().span_id


def remote_parent(state: str = "vendor=v1") -> Any:
    """The context of a span another service started, whose trace has a tracestate."""
    parent = SpanContext(
        int("4bf92f3577b34da6a3ce929d0e0e4736", 16),
        int("00f067aa0ba902b7", 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState.from_header([state]),
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


def only(spans: list[ReadableSpan], name: str, app: str) -> ReadableSpan:
    [span] = [
        s
        for s in spans
        if s.name == name and s.attributes and s.attributes["agentsched.app"] == app
    ]
    return span


async def test_subscribers_get_the_trace_context_and_a_span_in_its_trace(
    settings: Settings, exporter: InMemorySpanExporter
) -> None:
    seen: list[tuple[dict[str, str], int]] = []
    async with (
        EventBus("tc-sender", settings=settings) as sender,
        EventBus("tc-receiver", settings=settings) as receiver,
        receiver.subscribe("scraper.*") as events,
    ):
        token = trace_context_attach(remote_parent())
        try:
            published = await sender.publish("scraper.page_fetched", {"url": "u"})
        finally:
            trace_context_detach(token)
        with pytest.raises(TypeError):  # trace_context is read-only
            published.trace_context["traceparent"] = "x"  # type: ignore[index]
        async for event in events:
            with receiver.handling(event):
                inner = trace.get_current_span().get_span_context()
                seen.append((dict(event.trace_context), inner.span_id))
            break
        tail = sender.tail("scraper.*", from_id="0")
        tailed = await anext(tail)
        await tail.aclose()  # type: ignore[attr-defined]
    spans = exporter.get_finished_spans()
    publish = only(list(spans), "agentsched.publish scraper.page_fetched", "tc-sender")
    handle = only(list(spans), "agentsched.handle scraper.page_fetched", "tc-receiver")
    ctx = publish.context
    traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
    [(carried, current)] = seen
    assert carried == {"traceparent": traceparent, "tracestate": "vendor=v1"}
    assert dict(published.trace_context) == carried == dict(tailed.trace_context)
    assert handle.parent is not None and handle.parent.span_id == ctx.span_id
    assert handle.context.trace_id == ctx.trace_id == int("4bf92f3577b34da6a3ce929d0e0e4736", 16)
    assert handle.context.trace_state.to_header() == "vendor=v1"
    assert current == handle.context.span_id  # the block ran inside it
    assert handle.attributes is not None and handle.attributes["agentsched.status"] == "success"


async def test_a_failure_in_the_handling_block_is_recorded(
    settings: Settings, exporter: InMemorySpanExporter
) -> None:
    async with EventBus("tc-failing", settings=settings) as bus:
        event = await bus.publish("scraper.page_failed", {})
        with pytest.raises(ValueError), bus.handling(event):
            raise ValueError("no luck")
    handle = only(list(exporter.get_finished_spans()), "agentsched.handle scraper.page_failed",
                  "tc-failing")  # fmt: skip
    assert handle.attributes is not None and handle.attributes["agentsched.status"] == "failed"
    assert [e.attributes["exception.type"] for e in handle.events if e.attributes] == ["ValueError"]


def test_an_untraced_event_has_an_empty_context() -> None:
    event = EventMessage.model_validate(
        {"id": "e", "event_type": "a.b", "source_agent": "s", "created_at": 0}
    )
    assert dict(event.trace_context) == {}
    assert "trace_context" not in event.model_dump()


class _OtherKeys(TextMapPropagator):
    """A propagator writing a header of its own, as B3 or Jaeger's do."""

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        carrier["x-other-trace"] = "1"

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        return context

    @property
    def fields(self) -> set[str]:
        return {"x-other-trace"}


def test_the_job_carries_w3c_context_whatever_the_global_propagator(
    exporter: InMemorySpanExporter,
) -> None:
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(_OtherKeys())
    try:
        metadata: dict[str, Any] = {}
        token = trace_context_attach(remote_parent("vendor=v2"))
        try:
            span = tracing.start_enqueue("tests.noop", "tc-app", metadata)
        finally:
            trace_context_detach(token)
        tracing.end(span, execution_id="e1")
        tracing.take_context({"tc": metadata})
        run = tracing.run_span("tests.noop", "tc-app", "e1", 1)
        run.end("success")
    finally:
        propagate.set_global_textmap(previous)
    ctx = span.get_span_context()
    assert metadata == {
        "traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01",
        "tracestate": "vendor=v2",
    }
    [ran] = [s for s in exporter.get_finished_spans()
             if s.name == "agentsched.run tests.noop" and s.attributes
             and s.attributes["agentsched.app"] == "tc-app"]  # fmt: skip
    assert ran.parent is not None and ran.parent.span_id == ctx.span_id
    assert ran.context.trace_state.to_header() == "vendor=v2"


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
    ],
)
def test_a_bad_traceparent_is_no_parent(value: str | None) -> None:
    assert tracing.parse_traceparent(value) is None


def test_a_traceparent_is_read_as_w3c_says() -> None:
    parsed = tracing.parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert parsed == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1)
    # A later version may append fields: the first four still count.
    assert tracing.parse_traceparent(
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes"
    ) == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 0)


def test_an_execution_id_known_at_the_start_is_an_attribute_of_the_enqueue_span(
    exporter: InMemorySpanExporter,
) -> None:
    span = tracing.start_enqueue("tests.noop", "tc-known", {}, execution_id="e-known")
    assert span.attributes["agentsched.execution_id"] == "e-known"  # before it ends
    tracing.end(span)
    ended = only(list(exporter.get_finished_spans()), "agentsched.enqueue tests.noop", "tc-known")
    assert ended.attributes is not None and ended.attributes["agentsched.execution_id"] == "e-known"


def test_spans_of_one_function_keep_their_own_attributes(
    exporter: InMemorySpanExporter,
) -> None:
    """Span names and the attributes every span of a function has are built once and
    shared: a span's own attributes (execution id, attempt, status) must not leak into
    the next span of the same function."""
    runs_made = [("e-one", 1, "failed"), ("e-two", 2, "success"), ("e-3", 1, "cancelled")]
    for ident, attempt, status in runs_made:
        metadata: dict[str, Any] = {}
        span = tracing.start_enqueue("tests.noop", "tc-shared", metadata, execution_id=ident)
        tracing.end(span)
        tracing.take_context({"tc": metadata})
        tracing.run_span("tests.noop", "tc-shared", ident, attempt).end(status)
    tracing.end(tracing.start_enqueue("tests.noop", "tc-shared", {}))  # no id known yet
    spans = [s for s in exporter.get_finished_spans()
             if s.attributes and s.attributes.get("agentsched.app") == "tc-shared"]  # fmt: skip
    enqueues = [dict(s.attributes or {}) for s in spans if "enqueue" in s.name]
    runs = [dict(s.attributes or {}) for s in spans if s.name == "agentsched.run tests.noop"]
    common = {"agentsched.app": "tc-shared", "agentsched.function": "tests.noop"}
    assert enqueues == [{**common, "agentsched.execution_id": i} for i, _, _ in runs_made] + [
        common
    ]
    assert runs == [
        {**common, "agentsched.execution_id": i, "agentsched.attempt": a, "agentsched.status": s}
        for i, a, s in runs_made
    ]
