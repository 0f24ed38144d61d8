"""Prometheus metrics: what a worker's port and the API's /metrics say, with real services.

Every test has its own app name, so the `app` label makes absolute values per test,
even though prometheus-client's registry is shared by the whole test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from redis.exceptions import ResponseError

from agentsched import EventBus, TaskQueue
from agentsched.api import create_app
from agentsched.errors import ConfigError
from agentsched.jobs.recorder import Recorder
from agentsched.jobs.runtime import Runtime
from agentsched.keys import Keys
from agentsched.observability import metrics
from agentsched.observability.scrape import MetricsServer, Source, read
from agentsched.scheduling.service import Scheduler, SchedulerService
from agentsched.settings import Settings, load_settings
from tests import sample_tasks  # noqa: F401  registers tests.noop, which the schedules run
from tests.conftest import close_worker
from tests.test_api_support import eventually, serve

ADD = "tests.sample_tasks.add"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name` whose labels include `labels`; None when there is none."""
    found = [v for n, ls, v in samples(text) if n == name and labels.items() <= ls.items()]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def sample(name: str, **labels: str) -> float | None:
    """A sample of this test process's own registry."""
    return REGISTRY.get_sample_value(name, labels)


async def listening(host: str, port: int, timeout: float = 30) -> None:
    """Wait until something accepts connections on host:port."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            await writer.wait_closed()
            return


async def scrape(port: int) -> str:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_worker_port_counts_jobs_by_function_and_outcome(
    settings: Settings, run_worker: Callable[..., Any], tmp_path: Path
) -> None:
    port = free_port()
    await run_worker(metrics_port=port)
    app = settings.app
    async with TaskQueue(settings) as queue:
        ok = await queue.enqueue(ADD, args=[1, 2])
        bad = await queue.enqueue("tests.boom", kwargs={"message": "secret-value-42"})
        flaky = await queue.enqueue("tests.flaky", args=[str(tmp_path / "m"), 1])
        later = await queue.enqueue("tests.noop", delay=600)
        assert await queue.get_result(ok.id, timeout=10) == 3
        assert await queue.get_result(flaky.id, timeout=10) == "ok after 2"
        await eventually(lambda: queue.get_status(bad.id), lambda s: s.value == "failed")

    text = await eventually(
        lambda: scrape(port),
        lambda t: (
            value(t, "agentsched_workers_alive", app=app) == 1
            and (value(t, "agentsched_recorder_rows_total", app=app) or 0) >= 4
        ),
    )
    finished = "agentsched_executions_finished_total"
    assert value(text, finished, app=app, function=ADD, status="success", error_kind="") == 1
    assert value(text, finished, app=app, function="tests.flaky", status="success") == 1
    assert (
        value(text, finished, app=app, function="tests.boom", status="failed")
        == 1
        == value(text, finished, app=app, function="tests.boom", error_kind="exception")
    )
    assert value(text, "agentsched_executions_retried_total", app=app, function="tests.flaky") == 1
    assert value(text, "agentsched_executions_enqueued_total", app=app, function=ADD) == 1
    runs = "agentsched_execution_duration_seconds_count"
    assert value(text, runs, app=app, function="tests.flaky") == 2  # one per attempt
    assert value(text, "agentsched_pickup_delay_seconds_count", app=app) == 4
    assert value(text, "agentsched_queue_jobs", app=app, state="deferred") == 1
    assert value(text, "agentsched_queue_jobs", app=app, state="queued") == 0
    assert value(text, "agentsched_queue_jobs", app=app, state="running") == 0
    # Never an execution id or an argument value in a label.
    ids = {ok.id, bad.id, flaky.id, later.id}
    for _name, labels, _v in samples(text):
        assert not ids & set(labels.values())
        assert not any("secret-value-42" in v for v in labels.values())


async def test_api_metrics_need_the_key_and_show_the_queue(settings: Settings) -> None:
    keyed = settings.model_copy(update={"api_key": SecretStr("k3y")})
    async with serve(create_app(keyed, tasks_files=[])) as client:
        assert (await client.get("/metrics")).status_code == 401
        post = await client.post(
            "/executions", json={"function": ADD, "args": [1, 2]}, headers={"X-API-Key": "k3y"}
        )
        assert post.status_code == 202
        response = await client.get("/metrics", headers={"X-API-Key": "k3y"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text, app = response.text, settings.app
    assert value(text, "agentsched_executions_enqueued_total", app=app, function=ADD) == 1
    assert value(text, "agentsched_queue_jobs", app=app, state="queued") == 1
    assert value(text, "agentsched_workers_alive", app=app) == 0


async def test_api_serves_the_metrics_port_without_the_key(settings: Settings) -> None:
    port = free_port()
    keyed = settings.model_copy(update={"api_key": SecretStr("k3y"), "metrics_port": port})
    async with serve(create_app(keyed, tasks_files=[])):
        text = await scrape(port)
        assert value(text, "agentsched_queue_jobs", app=settings.app, state="queued") == 0
    with pytest.raises(httpx.ConnectError):  # closed with the app
        await scrape(port)


async def test_recorder_lag_is_the_age_of_the_oldest_unwritten_snapshot(
    settings: Settings,
) -> None:
    async with Runtime(settings) as runtime:
        source = Source(
            asyncio.get_running_loop(),
            runtime.redis,
            Keys(settings.redis_prefix, settings.app),
            settings.lease_seconds,
        )
        assert (await read(source)).recorder_lag == 0
        async with TaskQueue(runtime=runtime) as queue:
            await queue.enqueue("tests.noop")
        lagging = await eventually(lambda: read(source), lambda r: r.recorder_lag >= 0.2)
        assert lagging.queued == 1 and lagging.deferred == 0
        recorder = Recorder(runtime.redis, runtime.executions, runtime.tracker().keys.records)
        await recorder.drain()
        assert (await read(source)).recorder_lag == 0


async def test_event_traffic_is_counted_per_app(settings: Settings) -> None:
    agent = f"ev-{uuid.uuid4().hex[:8]}"
    async with (
        EventBus(agent, settings=settings, visibility_timeout=0.2, max_deliveries=2) as bus,
    ):
        failures: list[str] = []

        @bus.on("scraper.*")
        async def handler(event: Any) -> None:
            failures.append(event.id)
            raise RuntimeError("handler fails every time")

        await bus.start()

        async def groups() -> list[Any]:
            with contextlib.suppress(ResponseError):  # no stream yet
                return list(await bus._client().xinfo_groups(bus.stream))
            return []

        # Events before the group exists are not this app's: wait for the listener.
        await eventually(groups, lambda gs: any(g["name"] == agent.encode() for g in gs))
        await bus.publish("scraper.page_fetched", {"url": "u"})
        await bus.publish("scraper.page_fetched", {"url": "v"})

        async def dead() -> float | None:
            return sample("agentsched_events_dead_lettered_total", app=agent)

        await eventually(dead, lambda n: n == 2)
    published = sample("agentsched_events_published_total", app=agent, event_type="scraper")
    assert published == 2
    assert sample("agentsched_events_delivered_total", app=agent) == 4  # each twice, then dead
    assert sample("agentsched_events_redelivered_total", app=agent) == 2
    assert len(failures) == 4


async def test_schedules_record_fire_lag_and_skips(settings: Settings) -> None:
    async with Runtime(settings) as runtime:
        scheduler = Scheduler(runtime)
        s = await scheduler.create(
            {"name": "lag", "function": "tests.noop", "interval": "60s", "overlap": "skip"}
        )
        assert s.next_run_at is not None
        service = SchedulerService(runtime)
        lag = "agentsched_schedule_fire_lag_seconds_count"
        assert sample(lag, app=settings.app) is None
        assert (await service.tick(s.next_run_at)).enqueued == 1
        assert sample(lag, app=settings.app) == 1
        # The first run is still queued (no worker): the next fire time is skipped.
        later = s.next_run_at + dt.timedelta(seconds=60)
        assert (await service.tick(later)).overlap_skipped == 1
        skipped = "agentsched_schedule_skipped_total"
        assert sample(skipped, app=settings.app, reason="overlap") == 1
        assert sample(skipped, app=settings.app, reason="misfire") is None



async def test_misfires_count_as_misfires_only(settings: Settings) -> None:
    async with Runtime(settings) as runtime:
        s = await Scheduler(runtime).create(
            {"name": "down", "function": "tests.noop", "interval": "60s", "overlap": "allow"}
        )
        assert s.next_run_at is not None
        # Eleven fire times passed while nothing ran; run_once runs the latest of them.
        ten_minutes_later = s.next_run_at + dt.timedelta(minutes=10, seconds=30)
        stats = await SchedulerService(runtime).tick(ten_minutes_later)
        assert (stats.enqueued, stats.missed, stats.overlap_skipped) == (1, 10, 0)
        skipped = "agentsched_schedule_skipped_total"
        assert sample(skipped, app=settings.app, reason="misfire") == 10
        assert sample(skipped, app=settings.app, reason="overlap") is None


async def test_a_fire_time_the_worker_cannot_run_counts_as_unrunnable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Runtime(settings) as runtime:
        s = await Scheduler(runtime).create(
            {"name": "gone", "function": "tests.noop", "interval": "60s"}
        )
        assert s.next_run_at is not None
        # A worker whose code no longer has the function (a deploy removed it).
        monkeypatch.setattr("agentsched.scheduling.service.registered", dict)
        stats = await SchedulerService(runtime).tick(s.next_run_at)
        assert (stats.enqueued, stats.unrunnable_skipped, stats.overlap_skipped) == (0, 1, 0)
        skipped = "agentsched_schedule_skipped_total"
        assert sample(skipped, app=settings.app, reason="unrunnable") == 1
        assert sample(skipped, app=settings.app, reason="overlap") is None


async def cancelled_count(settings: Settings) -> float | None:
    labels = {"app": settings.app, "function": "tests.sleep", "error_kind": ""}
    return sample("agentsched_executions_finished_total", status="cancelled", **labels)


async def test_each_cancel_counts_once(settings: Settings, run_worker: Callable[..., Any]) -> None:
    await run_worker()
    async with TaskQueue(settings) as queue:
        queued = await queue.enqueue("tests.sleep", args=[30], delay=3600)
        assert await queue.cancel(queued.id) is True  # removed from the queue by the API
        assert await cancelled_count(settings) == 1
        running = await queue.enqueue("tests.sleep", args=[30])
        await eventually(lambda: queue.get_status(running.id), lambda s: s.value == "running")
        assert await queue.cancel(running.id) is True  # stopped by its worker
        await eventually(lambda: cancelled_count(settings), lambda n: n == 2)


async def test_a_forced_cancel_counts_once(
    settings: Settings, run_worker: Callable[..., Any]
) -> None:
    worker = await run_worker()
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.sleep", args=[30])
        await eventually(lambda: queue.get_status(execution.id), lambda s: s.value == "running")
        worker.main_task.cancel()  # its loop stops: the worker never sees the abort
        assert await queue.cancel(execution.id, wait=0.2) is True  # marked cancelled anyway
        assert await cancelled_count(settings) == 1
        # The job's coroutine ends now, with the cancel still requested on its record.
        await close_worker(worker)
        assert (await queue.get_execution(execution.id)).status.value == "cancelled"
        assert await cancelled_count(settings) == 1


async def test_task_events_published_are_the_lifecycle_events_written(
    settings: Settings, run_worker: Callable[..., Any], tmp_path: Path
) -> None:
    await run_worker()
    gate = tmp_path / "gate"
    async with TaskQueue(settings) as queue:
        runs = [
            await queue.enqueue("tests.noop"),
            await queue.enqueue("tests.boom"),
            await queue.enqueue("tests.flaky", [str(tmp_path / "flaky"), 1]),  # one retry
            await queue.enqueue("tests.staged", [str(gate)]),  # progress reports
        ]
        await queue.cancel((await queue.enqueue("tests.noop", delay=3600)).id)
        await eventually(lambda: queue.get_status(runs[-1].id), lambda s: s.value == "running")
        gate.write_text("go")
        for execution in runs:
            with contextlib.suppress(Exception):
                await queue.get_result(execution.id, timeout=10)
        stream = await queue.runtime.redis.xrange(Keys(settings.redis_prefix, settings.app).events)
    written = [json.loads(fields[b"data"]) for _, fields in stream]
    ours = [e["event_type"] for e in written if e["source_agent"] == settings.app]
    assert {"task.progress", "task.retrying", "task.cancelled"} <= set(ours), ours
    assert all(t.startswith("task.") for t in ours)
    published = "agentsched_events_published_total"
    assert sample(published, app=settings.app, event_type="task") == len(ours)

def test_counting_can_be_turned_off() -> None:
    app = f"off-{uuid.uuid4().hex[:8]}"
    try:
        metrics.configure(False)
        metrics.enqueued(app, "f")
        metrics.finished(app, "f", "failed", "exception")
    finally:
        metrics.configure(True)
    metrics.finished(app, "f", "success", "exception")  # a success carries no error kind
    finished = "agentsched_executions_finished_total"
    assert sample("agentsched_executions_enqueued_total", app=app, function="f") is None
    assert sample(finished, app=app, function="f", status="failed", error_kind="exception") is None
    assert sample(finished, app=app, function="f", status="success", error_kind="") == 1


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("metrics_port", "abc"),
        ("metrics_port", "70000"),
        ("log_format", "xml"),
        ("tracing", "maybe"),
    ],
)
def test_bad_observability_settings_name_the_variable(field: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**{field: raw})
    message = str(caught.value)
    assert message.startswith(f"AGENTSCHED_{field.upper()}: ") and "\n" not in message


def test_an_empty_metrics_port_is_off() -> None:
    assert load_settings(metrics_port="").metrics_port is None
    assert load_settings(metrics_port="9100").metrics_port == 9100


def ours(text: str, app: str) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return sorted(
        (name, tuple(sorted(labels.items())), v)
        for name, labels, v in samples(text)
        if name.startswith("agentsched_") and labels.get("app") == app
    )


def test_the_port_says_what_prometheus_client_says() -> None:
    """`metrics.render()` (what a metrics port answers) and prometheus-client's own
    renderer of the registry (the API's /metrics) give the same samples."""
    app = f"render-{uuid.uuid4().hex[:8]}"
    metrics.enqueued(app, 'odd "name"\\ with\na newline')
    metrics.finished(app, "f", "failed", "timeout")
    metrics.finished(app, "f", "success", "timeout")
    for seconds in (0.005, 0.0051, 7.25, 5000.0):
        metrics.attempt_ran(app, "f", seconds)
    metrics.picked_up(app, -1.0)
    metrics.events_delivered(app, 3, redelivered=1)
    metrics.events_dead_lettered(app, 1_500_000)
    fast, slow = metrics.render().decode(), generate_latest(REGISTRY).decode()
    assert ours(fast, app) == ours(slow, app)
    # 3 execution counters, 12 + 2 run-time and 17 + 2 pickup samples, 4 bus counters
    # (the `task` events those calls stand for among them).
    assert len(ours(fast, app)) == 3 + 14 + 19 + 4
    dead = f'agentsched_events_dead_lettered_total{{app="{app}"}} 1.5e+06\n'
    assert dead in fast and dead in slow  # numbers written as Go (and Prometheus) write them
    bucket = "agentsched_execution_duration_seconds_bucket"
    # `le` is inclusive: 0.005 falls in the 0.005 bucket, as prometheus-client has it.
    assert value(fast, bucket, app=app, function="f", le="0.005") == 1
    assert value(fast, bucket, app=app, function="f", le="0.025") == 2
    assert value(fast, bucket, app=app, function="f", le="3600.0") == 3
    assert value(fast, bucket, app=app, function="f", le="+Inf") == 4
    assert value(fast, "agentsched_execution_duration_seconds_sum", app=app) == 5007.2601
    assert value(fast, "agentsched_pickup_delay_seconds_bucket", app=app, le="0.001") == 1
    name = 'odd "name"\\ with\na newline'
    assert value(fast, "agentsched_executions_enqueued_total", app=app, function=name) == 1


def test_the_metrics_port_stops_at_once() -> None:
    """A worker's shutdown does not wait for the metrics thread's next poll."""
    for _ in range(3):
        server = MetricsServer(None, free_port()).start()
        time.sleep(0.05)
        began = time.perf_counter()
        server.stop()
        assert time.perf_counter() - began < 0.1


def outward_address() -> str | None:
    """This host's address on its default route (no packet is sent), if not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


async def test_the_worker_port_listens_on_loopback_unless_told_otherwise(
    settings: Settings, run_worker: Callable[..., Any]
) -> None:
    address = outward_address()
    if address is None:
        pytest.skip("no network interface but loopback")
    private, public = free_port(), free_port()
    await run_worker(metrics_port=private)
    await run_worker(metrics_port=public, metrics_host="0.0.0.0")
    # Each port opens in its worker's start-up, which takes its time on a busy machine.
    await listening("127.0.0.1", private)
    await listening(address, public)
    assert value(await scrape(private), "agentsched_workers_alive", app=settings.app) is not None
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://{address}:{private}/metrics", timeout=5)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{address}:{public}/metrics", timeout=5)
    assert response.status_code == 200
    assert load_settings(metrics_host="0.0.0.0").metrics_host == "0.0.0.0"
    assert load_settings().metrics_host == "127.0.0.1"
