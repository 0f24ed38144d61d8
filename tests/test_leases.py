"""The lease watchdog of a worker: stops a job whose lease ran out, sleeps while idle."""

from __future__ import annotations

import asyncio
import time

from agentsched.jobs.arq_pool import StatusRides
from agentsched.jobs.leases import Leases
from agentsched.settings import load_settings


class Looked(dict[str, float]):
    """The running jobs, counting how often the watchdog looks through them."""

    looks = 0

    def items(self):  # type: ignore[no-untyped-def,override]
        self.looks += 1
        return super().items()


def _leases() -> Leases:
    leases = Leases(load_settings(lease_seconds=1.0), StatusRides(), "w1", lambda c: c.close())
    leases.running = Looked()
    return leases


async def test_watchdog_stops_a_job_at_its_deadline_and_sleeps_while_none_runs() -> None:
    leases = _leases()
    watchdog = asyncio.create_task(leases.watchdog())
    try:
        job = asyncio.create_task(asyncio.sleep(30))
        await asyncio.sleep(0.5)
        assert leases.running.looks == 0  # type: ignore[attr-defined]  # idle: it slept

        async def held() -> None:
            leases.hold("job-1")
            await job

        holder = asyncio.create_task(held())
        await asyncio.sleep(0)
        stop_at = leases.running["job-1"]
        await asyncio.wait([holder], timeout=5)
        stopped = time.monotonic()
        assert holder.cancelled() and "job-1" in leases.rides.lost
        # Stopped at its deadline (lease 1 s x 0.8), not a tick late or early.
        assert stop_at <= stopped < stop_at + 0.1
        # Then it waits for the next job rather than ticking.
        looks = leases.running.looks  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)
        assert leases.running.looks == looks  # type: ignore[attr-defined]
    finally:
        watchdog.cancel()


async def test_a_renewed_lease_is_not_stopped() -> None:
    leases = _leases()
    watchdog = asyncio.create_task(leases.watchdog())
    try:
        forever = asyncio.create_task(asyncio.sleep(30))

        async def held() -> None:
            leases.hold("job-2")
            await forever

        holder = asyncio.create_task(held())
        for _ in range(15):  # 1.5 s, past two unrenewed deadlines
            await asyncio.sleep(0.1)
            leases.running["job-2"] = time.monotonic() + 0.8  # what a renewal does
        assert not holder.done() and "job-2" in leases.running
        holder.cancel()
    finally:
        watchdog.cancel()
