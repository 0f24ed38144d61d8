"""Three real worker processes, three scheduler loops, one schedule: each fire time once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest

from agentsched.jobs.runtime import Runtime
from agentsched.registry import import_task_modules
from agentsched.scheduling.service import Scheduler
from agentsched.settings import Settings
from agentsched.status import TaskStatus
from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent
RUN_SECONDS = 22


async def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
async def test_three_worker_processes_fire_each_second_exactly_once(
    settings: Settings, tmp_path: Path
) -> None:
    import_task_modules(settings.task_modules)
    marker = tmp_path / "runs"
    procs: list[subprocess.Popen[bytes]] = []
    async with Runtime(settings) as runtime:
        scheduler = Scheduler(runtime)
        workers_key = f"{settings.redis_prefix}workers:{settings.app}"
        try:
            for i in range(3):
                with open(tmp_path / f"worker{i}.log", "wb") as log:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "arq", "agentsched.WorkerSettings"],
                        cwd=ROOT, env=subprocess_env(settings), stdout=log,
                        stderr=subprocess.STDOUT,
                    ))  # fmt: skip

            async def all_up() -> bool:
                return await runtime.redis.zcard(workers_key) >= 3

            await wait_until(all_up, 60, "three workers")
            # tests.flaky counts its runs in a file: a fire time run twice would show.
            schedule = await scheduler.create({
                "name": "every-second", "function": "tests.flaky", "interval": 1,
                "kwargs": {"marker": str(marker), "fail_times": 0}, "overlap": "allow",
            })  # fmt: skip
            await asyncio.sleep(RUN_SECONDS)
            await scheduler.disable(schedule.id)
            last = (await scheduler.get(schedule.id)).last_run_at
            assert all(p.poll() is None for p in procs), "a worker exited early"

            async def all_recorded() -> bool:
                rows, total = await runtime.executions.list(
                    settings.app, task_id=schedule.id, limit=1000
                )
                return total > 0 and all(e.status is TaskStatus.SUCCESS for e in rows)

            await wait_until(all_recorded, 15, "every run recorded as success")
        finally:
            stop(procs)
        rows, total = await runtime.executions.list(settings.app, task_id=schedule.id, limit=1000)

    logs = "\n".join((tmp_path / f"worker{i}.log").read_text() for i in range(3))
    fires = sorted(e.scheduled_for for e in rows if e.scheduled_for is not None)
    assert len(fires) == total >= RUN_SECONDS - 2, logs[-3000:]
    assert len(set(fires)) == len(fires), "duplicate fire times"
    assert fires[0] == schedule.next_run_at, "the first fire time is missing"
    assert fires[-1] == last
    gaps = {(b - a).total_seconds() for a, b in pairwise(fires)}
    assert gaps == {1.0}, f"missing or extra fire times: {sorted(gaps)}"
    assert int(marker.read_text()) == total, "a fire time ran more than once"
    assert sorted(int(str(e.result).rsplit(" ", 1)[1]) for e in rows) == list(range(1, total + 1))
    assert all((e.enqueued_at - e.scheduled_for).total_seconds() < 1.0 for e in rows)  # type: ignore[operator]
    with contextlib.suppress(FileNotFoundError):
        assert "Traceback" not in logs, logs[-3000:]
