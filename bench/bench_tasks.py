"""Tasks the benchmarks run."""

from agentsched import task


@task(name="bench.noop")
async def noop() -> None:
    return None
