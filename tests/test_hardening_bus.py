"""The bus keeps an event with the replica handling it, however long its handler runs.

Two replicas of one app, a handler slower than the visibility timeout: before the claim
of an in-flight event was renewed, the idle replica claimed and handled it a second time.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import pytest

from agentsched.events import EventBus, EventMessage
from tests.test_events import collect, ev_settings, make_bus, raw, wait_until

__all__ = ["collect", "ev_settings", "make_bus", "raw"]  # fixtures used by name below

VT = 0.6  # visibility timeout
SLOW = 1.5  # handler time: well over the visibility timeout


async def test_slow_async_for_bodies_are_handled_once_across_two_replicas(
    make_bus, collect, raw
) -> None:
    a = make_bus("llm", visibility_timeout=VT)
    b = make_bus("llm", visibility_timeout=VT)
    pub = make_bus("publisher")
    seen: collections.Counter[str] = collections.Counter()

    async def slow(event: EventMessage) -> None:
        seen[event.id] += 1
        await asyncio.sleep(SLOW)

    await collect(a.subscribe("ask.*"), slow)
    await collect(b.subscribe("ask.*"), slow)
    sent = [(await pub.publish("ask.llm", {"n": n})).id for n in range(4)]
    await wait_until(lambda: set(seen) == set(sent), timeout=30)
    await wait_until(lambda: _pending_zero(raw, a), timeout=30)
    assert dict(seen) == dict.fromkeys(sent, 1)
    # The renewals kept the delivery count: nothing was counted as a failed delivery.
    assert await raw.xlen(a.dead_stream) == 0


async def test_slow_callbacks_are_handled_once_across_two_replicas(make_bus, raw) -> None:
    seen: collections.Counter[str] = collections.Counter()

    async def slow(event: EventMessage) -> None:
        seen[event.id] += 1
        await asyncio.sleep(SLOW)

    replicas = [make_bus("llm", visibility_timeout=VT) for _ in range(2)]
    for bus in replicas:
        bus.on("ask.*")(slow)
        await bus.start()
    pub = make_bus("publisher")
    sent = [(await pub.publish("ask.llm", {"n": n})).id for n in range(4)]
    await wait_until(lambda: set(seen) == set(sent), timeout=30)
    await wait_until(lambda: _pending_zero(raw, replicas[0]), timeout=30)
    assert dict(seen) == dict.fromkeys(sent, 1)


@pytest.mark.parametrize("style", ["callback", "async_for"])
async def test_handler_timeout_lets_the_event_go_to_another_replica(
    make_bus, collect, style
) -> None:
    deliveries: list[tuple[str, float]] = []
    stuck = asyncio.Event()

    async def hangs(event: EventMessage) -> None:
        deliveries.append(("a", time.monotonic()))
        await stuck.wait()

    async def quick(event: EventMessage) -> None:
        deliveries.append(("b", time.monotonic()))

    a = make_bus("llm", visibility_timeout=VT, handler_timeout=0.5)
    b = make_bus("llm", visibility_timeout=VT)
    if style == "callback":
        a.on("ask.*")(hangs)
        await a.start()
    else:
        await collect(a.subscribe("ask.*"), hangs)
    pub = make_bus("publisher")
    await pub.publish("ask.llm", {})
    await wait_until(lambda: deliveries)
    await collect(b.subscribe("ask.*"), quick)
    await wait_until(lambda: len(deliveries) == 2, timeout=15)
    # A cancelled callback frees its listener, which may take the event back itself; a
    # body still running holds its loop, so there only the other replica can.
    assert deliveries[0][0] == "a" and (style == "callback" or deliveries[1][0] == "b")
    assert deliveries[1][1] - deliveries[0][1] >= 0.5  # not before the handler timeout
    stuck.set()


def test_handler_timeout_must_be_positive(ev_settings) -> None:
    with pytest.raises(ValueError, match="handler_timeout"):
        EventBus("llm", settings=ev_settings, handler_timeout=0)


async def _pending_zero(raw: Any, bus: EventBus) -> bool:
    return int((await raw.xpending(bus.stream, bus.group))["pending"]) == 0
