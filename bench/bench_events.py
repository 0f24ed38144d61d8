"""Event bus benchmark against raw redis-py, in one run on the same Redis.

    python bench/bench_events.py [--n 5000] [--latency 1000] [--events 10000]

Measures (Redis DB 11 by default, a fresh key prefix, deleted afterwards):
  1. a single awaited publish: raw `XADD ... MAXLEN ~` of one pre-encoded event vs
     `EventBus.publish` (validation, encoding, the same XADD); N each in 20 alternating
     rounds, compared by their fastest rounds (also printed: the median per-round ratio and
     the client CPU time per call, which other jobs on the machine do not disturb);
  2. publish-to-delivery latency through a consumer group (`async for` over `subscribe`),
     one event in flight at a time: p50 / p99;
  3. 10,000 events drained through one consumer group, by `subscribe` and by an `on`
     callback, acknowledgements included.
Each figure is printed with its target and PASS/FAIL; the exit status is 1 on any FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentsched.events import EventBus, EventMessage
from agentsched.settings import Settings, load_settings

REDIS_URL = os.environ.get("AGENTSCHED_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
ROUNDS = 20
results: list[bool] = []


def report(name: str, value: str, target: str, ok: bool) -> None:
    results.append(ok)
    print(f"  {name:<46} {value:>18}   target {target:<12} {'PASS' if ok else 'FAIL'}")


async def timed(n: int, op: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(ops per second, CPU microseconds of this process per op) over `n` awaited calls."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await op()
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n * 1e6


async def bench_publish(settings: Settings, n: int) -> None:
    raw = aioredis.Redis.from_url(settings.redis_url)
    raw_key = settings.redis_prefix + "raw-events"
    payload = {"url": "https://example.com/some/page", "status": 200}
    data = orjson.dumps(
        {
            "id": uuid.uuid4().hex,
            "event_type": "scraper.page_fetched",
            "source_agent": "bench",
            "target_agent": None,
            "payload": payload,
            "created_at": time.time(),
        }
    )
    maxlen = settings.event_maxlen
    async with EventBus("bench-pub", settings=settings) as bus:

        def raw_xadd() -> Awaitable[Any]:
            return raw.xadd(raw_key, {"data": data}, maxlen=maxlen, approximate=True)

        def publish() -> Awaitable[Any]:
            return bus.publish("scraper.page_fetched", payload)

        await timed(300, raw_xadd)  # warm both connections up
        await timed(300, publish)
        # The machine is shared with other jobs: short alternating rounds see the same
        # load, and, as timeit does, the fastest round of each is the least disturbed.
        per = n // ROUNDS
        raws: list[tuple[float, float]] = []
        buses: list[tuple[float, float]] = []
        for i in range(ROUNDS):
            if i % 2 == 0:
                raws.append(await timed(per, raw_xadd))
                buses.append(await timed(per, publish))
            else:
                buses.append(await timed(per, publish))
                raws.append(await timed(per, raw_xadd))
    await raw.aclose()
    raw_best, bus_best = max(r for r, _ in raws), max(r for r, _ in buses)
    medians = statistics.median(b[0] / r[0] for r, b in zip(raws, buses, strict=True))
    raw_cpu = statistics.median(c for _, c in raws)
    bus_cpu = statistics.median(c for _, c in buses)
    print(
        f"publish, one awaited call at a time (N={per * ROUNDS} each, {ROUNDS} alternating "
        f"rounds of {per})"
    )
    report("raw redis-py XADD (fastest round)", f"{raw_best:,.0f} ops/s", "baseline", True)
    report("EventBus.publish (fastest round)", f"{bus_best:,.0f} ops/s", "", True)
    ratio = bus_best / raw_best
    report("publish / raw XADD", f"{ratio:.2f}x", ">= 0.80x", ratio >= 0.8)
    print(
        f"  (median of per-round ratios {medians:.2f}x; client CPU per call: raw "
        f"{raw_cpu:.0f} us, publish {bus_cpu:.0f} us = {raw_cpu / bus_cpu:.2f}x)"
    )


async def bench_latency(settings: Settings, n: int) -> None:
    latencies: list[float] = []
    arrived = asyncio.Event()
    async with (
        EventBus("bench-lat", settings=settings) as sub_bus,
        EventBus("bench-pub", settings=settings) as pub,
    ):
        async with sub_bus.subscribe("bench.latency") as events:

            async def consume() -> None:
                async for event in events:
                    latencies.append(time.perf_counter() - event.payload["t"])
                    arrived.set()

            task = asyncio.create_task(consume())
            for i in range(n + 50):
                arrived.clear()
                await pub.publish("bench.latency", {"t": time.perf_counter(), "i": i})
                await asyncio.wait_for(arrived.wait(), 5)
            task.cancel()
            await asyncio.wait([task])
    samples = sorted(latencies[50:])  # the first 50 warm up
    p50 = samples[len(samples) // 2] * 1000
    p99 = samples[int(len(samples) * 0.99) - 1] * 1000
    print(f"publish-to-delivery latency through a consumer group ({len(samples)} events)")
    report("p50", f"{p50:.2f} ms", "<= 5 ms", p50 <= 5)
    report("p99", f"{p99:.2f} ms", "<= 20 ms", p99 <= 20)


async def fill(settings: Settings, stream: str, n: int, event_type: str) -> None:
    raw = aioredis.Redis.from_url(settings.redis_url)
    pipe = raw.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(
            stream,
            {
                "data": orjson.dumps(
                    {
                        "id": uuid.uuid4().hex,
                        "event_type": event_type,
                        "source_agent": "bench",
                        "target_agent": None,
                        "payload": {"i": i},
                        "created_at": time.time(),
                    }
                )
            },
        )
    await pipe.execute()
    await raw.aclose()


async def bench_throughput(settings: Settings, n: int) -> None:
    print(f"{n:,} events through one consumer group (acks included)")
    async with EventBus("bench-iter", settings=settings) as bus:
        async with bus.subscribe("bench.tp") as events:
            await fill(settings, bus.stream, n, "bench.tp")
            start, count = time.perf_counter(), 0
            async for _ in events:
                count += 1
                if count == n:
                    break
        rate = n / (time.perf_counter() - start)
    report("async for over subscribe()", f"{rate:,.0f} events/s", ">= 5,000/s", rate >= 5000)

    done = asyncio.Event()
    seen = [0]
    bus = EventBus("bench-cb", settings=settings)

    @bus.on("bench.cb")
    async def handle(event: EventMessage) -> None:
        seen[0] += 1
        if seen[0] == n:
            done.set()

    await bus.start()  # the group exists from here on
    await fill(settings, bus.stream, n, "bench.cb")
    start = time.perf_counter()
    await asyncio.wait_for(done.wait(), 60)
    rate = n / (time.perf_counter() - start)
    await bus.stop()
    report("on() callback listener", f"{rate:,.0f} events/s", ">= 5,000/s", rate >= 5000)


async def main(args: argparse.Namespace) -> int:
    prefix = f"bench:{uuid.uuid4().hex[:10]}:"
    settings = load_settings(redis_url=REDIS_URL, redis_prefix=prefix, app="bench")
    print(f"Redis {REDIS_URL}, prefix {prefix}, loop {type(asyncio.get_running_loop()).__module__}")
    try:
        await bench_publish(settings, args.n)
        await bench_latency(settings, args.latency)
        await bench_throughput(settings, args.events)
    finally:
        raw = aioredis.Redis.from_url(REDIS_URL)
        keys = [k async for k in raw.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await raw.delete(*keys)
        await raw.aclose()
    print("ALL PASS" if all(results) else "SOME FAIL")
    return 0 if all(results) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--latency", type=int, default=1000)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    ns = parser.parse_args()
    if ns.no_uvloop:
        sys.exit(asyncio.run(main(ns)))
    import uvloop

    sys.exit(uvloop.run(main(ns)))
