"""Tasks the benchmarks run (and, in a worker started with `BENCH_OTEL=drop`, the
tracer provider of bench/otel_drop.py)."""

import os

from agentsched import task
from bench.peers.common import push_stamp

if os.environ.get("BENCH_OTEL") == "drop":
    from bench import otel_drop

    otel_drop.install()


@task(name="bench.noop")
async def noop() -> None:
    return None


@task(name="bench.stamp")
async def stamp(t0: float) -> None:
    """Pickup latency: records how long after its enqueue (wall clock) it started."""
    await push_stamp(t0)
