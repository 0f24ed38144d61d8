"""Task functions the tests enqueue (imported by in-process and subprocess workers)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from agentsched import progress, task


@task
async def add(a: int, b: int) -> int:
    return a + b


@task(name="tests.noop")
async def noop(*args: object, **kwargs: object) -> None:
    """Takes anything: the tests' stand-in for a task whose arguments do not matter."""
    return None


@task(name="tests.boom")
async def boom(message: str = "boom") -> None:
    raise ValueError(message)


@task(name="tests.flaky", max_retries=3, retry_backoff=0.05)
async def flaky(marker: str, fail_times: int) -> str:
    """Fails `fail_times` times (counted in a file), then succeeds."""
    path = Path(marker)
    count = int(path.read_text()) if path.exists() else 0
    path.write_text(str(count + 1))
    if count < fail_times:
        raise RuntimeError(f"flaky failure {count + 1}")
    return f"ok after {count + 1}"


@task(name="tests.always_fails", max_retries=2, retry_backoff=0.05)
async def always_fails() -> None:
    raise RuntimeError("always")


@task(name="tests.slow", timeout=0.5)
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


@task(name="tests.sleep", timeout=60)
async def sleep(seconds: float, marker: str | None = None) -> str:
    if marker:
        Path(marker).write_text(str(os.getpid()))
    await asyncio.sleep(seconds)
    return "done"


@task(name="tests.sync_mul")
def sync_mul(a: int, b: int) -> dict[str, int]:
    time.sleep(0.01)
    return {"product": a * b}


@task(name="tests.lost", max_retries=1, timeout=60)
async def lost(marker: str, seconds: float) -> str:
    """Writes the worker's pid then sleeps: the test SIGKILLs that worker."""
    path = Path(marker)
    runs = path.read_text().splitlines() if path.exists() else []
    path.write_text("\n".join([*runs, str(os.getpid())]))
    await asyncio.sleep(seconds if not runs else 0)
    return f"run {len(runs) + 1}"


@task(name="tests.staged", timeout=30)
async def staged(gate: str) -> str:
    """Reports progress, then waits for the file `gate` before finishing."""
    progress(0.25, "starting")  # written at once
    progress(0.5, "halfway")  # written up to 0.5 s later
    while not Path(gate).exists():  # noqa: ASYNC110  (a file the test process creates)
        await asyncio.sleep(0.01)
    progress(message="finishing")
    return "staged"


@task(name="tests.sync_staged")
def sync_staged(steps: int) -> int:
    """A plain def reporting from its thread, then failing after the last step."""
    for i in range(steps):
        progress((i + 1) / (steps + 1), f"step {i + 1} of {steps}")
        time.sleep(0.01)
    raise RuntimeError("after the last step")


@task(name="tests.overrun", timeout=0.5, max_retries=1, retry_backoff=0.05)
def overrun(marker: str) -> str:
    """Attempt 1 overruns its timeout in its thread and keeps reporting; attempt 2 doesn't."""
    path = Path(marker)
    if not path.exists():
        path.write_text("1")
        for i in range(150):
            progress(message=f"attempt 1 late {i}")
            time.sleep(0.01)
        return "attempt 1"
    time.sleep(0.3)  # attempt 1's thread is still reporting meanwhile
    return "attempt 2"
