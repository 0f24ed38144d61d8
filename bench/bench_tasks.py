"""Tasks the benchmarks run."""

from agentsched import task
from bench.peers.common import push_stamp


@task(name="bench.noop")
async def noop() -> None:
    return None


@task(name="bench.stamp")
async def stamp(t0: float) -> None:
    """Pickup latency: records how long after its enqueue (wall clock) it started."""
    await push_stamp(t0)
