"""The event bus against a real Redis (DB 11, a fresh key prefix per test, cleaned after)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from agentsched.errors import InvalidEvent, NotFound, ServiceUnavailable
from agentsched.events import EventBus, EventMessage, Subscription
from agentsched.events.sse import sse_stream
from agentsched.settings import Settings, load_settings

REDIS_URL = os.environ.get("AGENTSCHED_TEST_EVENTS_REDIS_URL", "redis://127.0.0.1:6379/11")

Body = Callable[[EventMessage], Awaitable[None]]


@pytest.fixture
async def ev_settings() -> AsyncIterator[Settings]:
    prefix = f"test:{uuid.uuid4().hex}:"
    yield load_settings(redis_url=REDIS_URL, redis_prefix=prefix, app="tester")
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def raw(ev_settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def make_bus(ev_settings: Settings) -> AsyncIterator[Callable[..., EventBus]]:
    """Buses of this test's prefix, stopped at teardown (start them yourself)."""
    buses: list[EventBus] = []

    def make(agent: str, **kwargs: Any) -> EventBus:
        bus = EventBus(agent, settings=kwargs.pop("settings", ev_settings), **kwargs)
        buses.append(bus)
        return bus

    yield make
    for bus in reversed(buses):
        await bus.stop()


class Collector:
    """Runs ``async for`` over a subscription in a task and keeps what it received."""

    def __init__(self, sub: Subscription, body: Body | None = None) -> None:
        self.sub, self.body = sub, body
        self.events: list[EventMessage] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Collector:
        await self.sub.__aenter__()  # the group exists from here on
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for event in self.sub:
            self.events.append(event)
            if self.body is not None:
                await self.body(event)

    async def kill(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])
        await self.sub.aclose()

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events]


@pytest.fixture
async def collect() -> AsyncIterator[Callable[..., Awaitable[Collector]]]:
    started: list[Collector] = []

    async def start(sub: Subscription, body: Body | None = None) -> Collector:
        collector = await Collector(sub, body).start()
        started.append(collector)
        return collector

    yield start
    for collector in started:
        await collector.kill()


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


async def pending(raw: aioredis.Redis, bus: EventBus, group: str) -> int:
    return int((await raw.xpending(bus.stream, group))["pending"])


async def wait_all_acked(raw: aioredis.Redis, bus: EventBus, group: str) -> None:
    async def none_pending() -> bool:
        return await pending(raw, bus, group) == 0

    await wait_until(none_pending)


async def test_broadcast_reaches_every_app_once(make_bus, collect) -> None:
    a, b, pub = make_bus("app-a"), make_bus("app-b"), make_bus("publisher")
    ca = await collect(a.subscribe("demo.*"))
    cb = await collect(b.subscribe("demo.*"))
    sent = [await pub.publish("demo.ping", {"n": i}) for i in range(3)]
    await wait_until(lambda: len(ca.events) >= 3 and len(cb.events) >= 3)
    await asyncio.sleep(0.3)  # room for a duplicate to show up
    assert ca.ids == cb.ids == [m.id for m in sent]
    first = ca.events[0]
    assert (first.event_type, first.source_agent, first.target_agent) == (
        "demo.ping", "publisher", None)
    assert first.payload == {"n": 0} and first.created_at.utcoffset() is not None


async def test_targeted_event_reaches_only_its_target(make_bus, collect, raw) -> None:
    a, b, pub = make_bus("app-a"), make_bus("app-b"), make_bus("publisher")
    ca = await collect(a.subscribe("demo.*"))
    cb = await collect(b.subscribe("demo.*"))
    private = await pub.publish("demo.private", {"secret": 1}, target_agent="app-b")
    marker = await pub.publish("demo.marker")
    await wait_until(lambda: marker.id in ca.ids and marker.id in cb.ids)
    assert ca.ids == [marker.id]
    assert cb.ids == [private.id, marker.id]
    assert cb.events[0].target_agent == "app-b"
    await wait_all_acked(raw, a, "app-a")  # app-a's group acked it unhandled


async def test_unmatched_and_foreign_events_are_acknowledged(make_bus, collect, raw) -> None:
    app, pub = make_bus("app-a"), make_bus("publisher")
    c = await collect(app.subscribe("demo.*"))
    await pub.publish("other.thing")
    await pub.publish("demo.x", target_agent="someone-else")
    wanted = await pub.publish("demo.y")
    await wait_until(lambda: c.events)
    await asyncio.sleep(0.2)
    assert c.ids == [wanted.id]
    await wait_all_acked(raw, app, "app-a")


async def test_two_replicas_split_1000_events(make_bus, collect, raw) -> None:
    r1, r2, pub = make_bus("workers"), make_bus("workers"), make_bus("publisher")
    c1 = await collect(r1.subscribe("job.*"))
    c2 = await collect(r2.subscribe("job.*"))
    sent = [(await pub.publish("job.created", {"i": i})).id for i in range(1000)]
    await wait_until(lambda: len(c1.events) + len(c2.events) >= 1000, timeout=30)
    await asyncio.sleep(0.3)
    got = c1.ids + c2.ids
    assert len(got) == 1000 and sorted(got) == sorted(sent)  # none lost, none doubled
    assert not set(c1.ids) & set(c2.ids)
    assert c1.events and c2.events, (len(c1.events), len(c2.events))
    await wait_all_acked(raw, r1, "workers")


@pytest.mark.parametrize("how", ["task_cancelled", "connection_closed"])
async def test_unacked_event_goes_to_the_other_replica(make_bus, collect, how) -> None:
    a = make_bus("svc", visibility_timeout=0.5)
    b = make_bus("svc", visibility_timeout=0.5)
    pub = make_bus("publisher")
    got_it = asyncio.Event()

    async def stuck(event: EventMessage) -> None:
        got_it.set()
        await asyncio.Event().wait()  # never finishes: the event stays unacknowledged

    ca = await collect(a.subscribe("job.*"), stuck)
    msg = await pub.publish("job.run", {"n": 1})
    await asyncio.wait_for(got_it.wait(), 5)
    delivered_at = time.monotonic()
    cb = await collect(b.subscribe("job.*"))
    if how == "task_cancelled":
        await ca.kill()
    else:
        await a.stop()  # closes a's connections while its handler is still running
    await wait_until(lambda: cb.events)
    assert cb.ids == [msg.id] and ca.ids == [msg.id]
    assert time.monotonic() - delivered_at >= 0.45  # not before the visibility timeout


async def test_poison_event_is_dead_lettered_and_can_be_replayed(
    make_bus, collect, raw, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="agentsched.events")
    bus = make_bus("fragile", visibility_timeout=0.3, max_deliveries=3)
    calls: list[str] = []
    broken = [True]

    @bus.on("job.*")
    async def handle(event: EventMessage) -> None:
        calls.append(event.id)
        if broken[0]:
            raise RuntimeError("boom")

    await bus.start()
    bystander = await collect(make_bus("bystander").subscribe("job.*"))
    msg = await make_bus("publisher").publish("job.poison", {"n": 1})

    async def dead() -> bool:
        return bool(await bus.dead_letters())

    await wait_until(dead, timeout=15)
    [letter] = await bus.dead_letters()
    assert calls == [msg.id] * 3
    assert (letter.original_id, letter.group, letter.deliveries) == (msg.stream_id, "fragile", 3)
    assert "3 deliveries" in letter.reason
    assert letter.event is not None and letter.event.id == msg.id
    assert await pending(raw, bus, "fragile") == 0  # acked once dead-lettered
    failures = [r for r in caplog.records if "boom" in r.getMessage()]
    assert len(failures) == 3 and all("\n" not in r.getMessage() for r in failures)

    broken[0] = False
    replayed = await bus.replay_dead_letter(letter.entry_id)
    assert (replayed.id, replayed.target_agent, replayed.payload) == (msg.id, "fragile", {"n": 1})
    await wait_until(lambda: len(calls) == 4)
    assert await bus.dead_letters() == []
    await asyncio.sleep(0.3)
    assert bystander.ids == [msg.id]  # the replay went to the failing app only
    with pytest.raises(NotFound):
        await bus.replay_dead_letter(letter.entry_id)
    with pytest.raises(InvalidEvent):
        await bus.replay_dead_letter("not-an-id")


async def test_malformed_entries_are_dead_lettered_and_reading_goes_on(
    make_bus, collect, raw
) -> None:
    bus = make_bus("reader")
    c = await collect(bus.subscribe())
    bad_ids = [
        await raw.xadd(bus.stream, {"junk": "1"}),
        await raw.xadd(bus.stream, {"data": "{not json"}),
        await raw.xadd(bus.stream, {"data": orjson.dumps(
            {"id": "x", "event_type": "a.b", "source_agent": "s", "payload": [1],
             "created_at": 0})}),
        await raw.xadd(bus.stream, {"data": b"\xff\xfe{"}),
    ]
    ok = await make_bus("publisher").publish("demo.ok")
    await wait_until(lambda: c.events)
    assert c.ids == [ok.id]
    letters = await bus.dead_letters(group="reader")
    assert sorted(x.original_id for x in letters) == sorted(i.decode() for i in bad_ids)
    reasons = " | ".join(x.reason for x in letters)
    assert "no data field" in reasons and "payload" in reasons and "json" in reasons.lower()
    assert all(x.deliveries == 1 and x.event is None for x in letters)
    assert await bus.dead_letters(group="someone-else") == []


async def test_reads_lifecycle_events_as_the_worker_lua_writes_them(make_bus, collect, raw):
    bus = make_bus("watcher")
    c = await collect(bus.subscribe("task.*"))
    script = """
    local event = {id = 'abc-1', event_type = 'task.completed', source_agent = ARGV[1],
      target_agent = cjson.null, payload = {execution_id = 'abc', ['function'] = 'm.f',
      app = ARGV[1], status = 'success', attempt = 1, task_id = cjson.null},
      created_at = tonumber(ARGV[2]) / 1000}
    return redis.call('XADD', KEYS[1], 'MAXLEN', '~', 1000, '*', 'data', cjson.encode(event))
    """
    now_ms = int(time.time() * 1000)
    await raw.eval(script, 1, bus.stream, "email-agent", now_ms)
    await wait_until(lambda: c.events)
    [event] = c.events
    assert (event.event_type, event.source_agent, event.target_agent) == (
        "task.completed", "email-agent", None)
    assert event.payload["status"] == "success" and event.payload["attempt"] == 1
    assert abs(event.created_at.timestamp() * 1000 - now_ms) < 2
    assert event.created_at.utcoffset() is not None and event.created_at.utcoffset().seconds == 0


async def test_consumers_recover_when_the_stream_is_deleted(
    make_bus, collect, raw, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="agentsched.events")
    a = make_bus("app-a", block_ms=300)
    seen_a: list[str] = []

    @a.on("demo.*")
    async def handle(event: EventMessage) -> None:
        seen_a.append(event.id)

    await a.start()
    cb = await collect(make_bus("app-b", block_ms=300).subscribe("demo.*"))
    pub = make_bus("publisher")
    first = await pub.publish("demo.one")
    await wait_until(lambda: seen_a and cb.events)
    assert await raw.delete(a.stream) == 1  # groups gone, as after an empty restart
    later = [(await pub.publish("demo.two")).id, (await pub.publish("demo.three")).id]
    await wait_until(lambda: len(seen_a) == 3 and len(cb.events) == 3, timeout=15)
    assert seen_a == cb.ids == [first.id, *later]
    assert any("vanished" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"event_type": "Bad Type"}, "event_type"),
        ({"event_type": ""}, "event_type"),
        ({"event_type": "a" * 129}, "event_type"),
        ({"event_type": "ok.type\n"}, "event_type"),
        ({"event_type": 42}, "event_type"),
        ({"event_type": "ok", "target_agent": "Not Valid!"}, "target_agent"),
        ({"event_type": "ok", "payload": [1, 2]}, "payload"),
        ({"event_type": "ok", "payload": "text"}, "payload"),
        ({"event_type": "ok", "payload": {"x": object()}}, "payload"),
        ({"event_type": "ok", "payload": {1: "int key"}}, "payload"),
        ({"event_type": "ok", "payload": {"b": "x" * 1017}}, "payload"),  # 1025 bytes
    ],
)
async def test_invalid_events_raise_and_write_nothing(
    make_bus, raw, ev_settings, kwargs, field
) -> None:
    bus = make_bus("app-a", settings=ev_settings.model_copy(update={"event_max_payload": 1024}))
    with pytest.raises(InvalidEvent) as info:
        await bus.publish(**kwargs)
    assert info.value.field == field
    assert await raw.exists(bus.stream) == 0
    await bus.publish("ok", {"b": "x" * 1016})  # exactly at the limit
    assert await raw.xlen(bus.stream) == 1


async def test_published_event_is_a_complete_event_message(make_bus) -> None:
    bus, other = make_bus("app-a"), make_bus("app-a")
    msg = await bus.publish("demo.x", {"k": [1, 2]}, target_agent="app-b")
    validated = EventMessage.model_validate(msg.model_dump())  # msg is built unvalidated
    assert validated.model_dump() == msg.model_dump()
    assert msg.model_fields_set == validated.model_fields_set
    ids = {msg.id} | {(await b.publish("demo.x")).id for b in (bus, other) for _ in range(50)}
    assert len(ids) == 101 and all(len(i) == 32 for i in ids)
    [(stream_id, fields)] = await bus._client().xrange(bus.stream, count=1)
    assert stream_id.decode() == msg.stream_id and list(fields) == [b"data"]
    assert EventMessage.model_validate_json(fields[b"data"]).model_dump() == msg.model_dump()


def test_invalid_agent_and_group_names(ev_settings) -> None:
    with pytest.raises(InvalidEvent) as info:
        EventBus("Bad Agent", settings=ev_settings)
    assert info.value.field == "agent"
    with pytest.raises(InvalidEvent) as info:
        EventBus("ok", group="UPPER", settings=ev_settings)
    assert info.value.field == "group"


async def test_unreachable_redis_is_one_clear_error() -> None:
    settings = load_settings(redis_url="redis://:s3cret@127.0.0.1:1/0", app="lonely")
    bus = EventBus(settings=settings)
    try:
        with pytest.raises(ServiceUnavailable) as info:
            await bus.start()
        assert "s3cret" not in str(info.value) and "***" in str(info.value)
        with pytest.raises(ServiceUnavailable):
            await bus.publish("demo.x")
    finally:
        await bus.stop()


async def test_callbacks_sync_async_and_failing_share_one_listener(make_bus) -> None:
    bus = make_bus("cb-app")
    seen: list[tuple[str, Any]] = []

    @bus.on("demo.*")
    async def on_any(event: EventMessage) -> None:
        seen.append(("async", event.event_type))

    @bus.on("demo.sync")
    def on_sync(event: EventMessage) -> None:
        seen.append(("sync", threading.current_thread() is not threading.main_thread()))

    @bus.on("demo.bad")
    async def on_bad(event: EventMessage) -> None:
        raise ValueError("nope")

    await bus.start()
    pub = make_bus("publisher")
    for name in ("demo.bad", "demo.sync", "demo.last"):
        await pub.publish(name)
    await wait_until(lambda: ("async", "demo.last") in seen)
    assert ("sync", True) in seen and ("async", "demo.bad") in seen  # the failure isolated
    await bus.stop()
    count = len(seen)
    await pub.publish("demo.after-stop")
    await asyncio.sleep(0.3)
    assert len(seen) == count


async def test_subscribe_acknowledges_only_finished_events(make_bus, raw) -> None:
    bus, pub = make_bus("acker"), make_bus("publisher")

    async with bus.subscribe("demo.*") as events:  # normal exit: the last event is acked
        await pub.publish("demo.one")
        async for _ in events:
            break
    assert await pending(raw, bus, "acker") == 0

    with pytest.raises(RuntimeError):  # the body raised: left for redelivery
        async with bus.subscribe("demo.*") as events:
            await pub.publish("demo.two")
            async for _ in events:
                raise RuntimeError("handler failed")
    assert await pending(raw, bus, "acker") == 1

    other = make_bus("acker2")
    async with other.subscribe("demo.*") as events:  # the previous is acked on `next`
        first, second = await pub.publish("demo.a"), await pub.publish("demo.b")
        got, unacked = [], []
        async for event in events:
            got.append(event.id)
            unacked.append([e["message_id"].decode() for e in await raw.xpending_range(
                other.stream, "acker2", "-", "+", 10)])
            await asyncio.sleep(0.01)  # a slow handler: acked before the next is handed out
            if len(got) == 2:
                break
    assert got == [first.id, second.id]
    assert unacked == [[first.stream_id, second.stream_id], [second.stream_id]]
    assert await pending(raw, other, "acker2") == 0


async def test_consumers_that_died_are_forgotten(make_bus, raw) -> None:
    bus = make_bus("tidy", visibility_timeout=0.3)
    async with bus.subscribe("demo.*"):
        pass  # the group exists; this consumer leaves it on close
    await raw.xreadgroup("tidy", "tidy:crashed:1", {bus.stream: ">"}, 1, 10)
    await raw.xgroup_createconsumer(bus.stream, "tidy", "tidy:busy:2")
    await make_bus("publisher").publish("demo.held")
    await raw.xreadgroup("tidy", "tidy:busy:2", {bus.stream: ">"}, 1)  # holds one event
    await asyncio.sleep(1.3)  # over 4 visibility timeouts
    async with bus.subscribe("demo.*"):
        names = {c["name"] for c in await raw.xinfo_consumers(bus.stream, "tidy")}
    assert b"tidy:crashed:1" not in names and b"tidy:busy:2" in names


async def test_stop_ends_a_running_subscription(make_bus) -> None:
    bus = make_bus("stopper", block_ms=200)
    await bus.start()

    async def consume() -> int:
        n = 0
        async for _ in bus.subscribe("demo.*"):
            n += 1
        return n

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    await bus.stop()
    assert await asyncio.wait_for(task, 10) == 0


async def test_streams_are_trimmed(make_bus, raw, ev_settings) -> None:
    bus = make_bus("trimmer", settings=ev_settings.model_copy(update={"event_maxlen": 100}))
    for i in range(1000):
        await bus.publish("demo.fill", {"i": i})
    assert 100 <= await raw.xlen(bus.stream) < 300


async def test_tail_from_an_id_and_from_now(make_bus) -> None:
    bus = make_bus("viewer")
    sent = [await bus.publish(f"demo.e{i}") for i in range(5)]
    targeted = await bus.publish("demo.dm", target_agent="someone-else")
    await bus.publish("other.noise")

    async def first(n: int, it: AsyncIterator[EventMessage]) -> list[EventMessage]:
        out = []
        async for event in it:
            out.append(event)
            if len(out) == n:
                break
        return out

    got = await asyncio.wait_for(first(4, bus.tail("demo.*", from_id=sent[1].stream_id)), 5)
    assert [e.id for e in got] == [m.id for m in sent[2:]] + [targeted.id]
    assert [e.stream_id for e in got[:3]] == [m.stream_id for m in sent[2:]]

    live = asyncio.create_task(first(1, bus.tail("demo.*")))  # from now: none of the above
    await asyncio.sleep(0.3)
    fresh = await bus.publish("demo.fresh")
    assert [e.id for e in await asyncio.wait_for(live, 5)] == [fresh.id]
    with pytest.raises(InvalidEvent):
        bus.tail(from_id="yesterday")


async def test_sse_stream_yields_well_formed_frames_and_keepalives(make_bus) -> None:
    bus = make_bus("dashboard")
    sent = [await bus.publish("demo.a", {"n": 1}), await bus.publish("demo.b", {"n": 2})]
    await bus.publish("other.skip")
    chunks = sse_stream(bus, ["demo.*"], from_id="0", keepalive=0.2)
    try:
        first = await asyncio.wait_for(anext(chunks), 5)
        frames = first.split("\n\n")
        assert frames[-1] == "" and len(frames) == 3
        for frame, msg in zip(frames[:2], sent, strict=True):
            lines = frame.split("\n")
            assert [line.split(": ", 1)[0] for line in lines] == ["id", "event", "data"]
            assert lines[0] == f"id: {msg.stream_id}" and lines[1] == f"event: {msg.event_type}"
            event = EventMessage.model_validate_json(lines[2][len("data: "):])
            assert (event.id, event.payload) == (msg.id, msg.payload)
        assert await asyncio.wait_for(anext(chunks), 5) == ": keepalive\n\n"
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    with pytest.raises(InvalidEvent):
        sse_stream(bus, from_id="0-0\nevil")
