"""The scheduler's decisions that leave a gap in a schedule's runs are each one line on
the `agentsched.scheduler` logger at INFO or above, so a worker at
`AGENTSCHED_LOG_LEVEL=INFO` explains the gap: an overlap skip, and a schedule parked
because it has no next fire time. Captured at INFO: a line moved to DEBUG is missing."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator

import pytest

from agentsched.jobs.runtime import Runtime
from agentsched.registry import import_task_modules
from agentsched.scheduling.service import Scheduler, SchedulerService
from agentsched.settings import Settings

LOGGER = "agentsched.scheduler"


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    import_task_modules(settings.task_modules)
    async with Runtime(settings) as rt:
        yield rt


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    """Records of the scheduler's logger containing `text`, each at INFO or above."""
    found = [r for r in caplog.records if r.name == LOGGER and text in r.getMessage()]
    assert all(r.levelno >= logging.INFO for r in found), found
    return found


async def test_an_overlap_skip_is_one_info_line(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    scheduler = Scheduler(runtime)
    s = await scheduler.create({"name": "busy", "function": "tests.noop", "interval": 60})
    assert s.next_run_at is not None
    service = SchedulerService(runtime)
    first = s.next_run_at + dt.timedelta(seconds=1)
    assert (await service.tick(first)).enqueued == 1  # no worker: it stays queued
    assert not logged(caplog, "overlap")
    stats = await service.tick(first + dt.timedelta(seconds=60))
    assert stats.overlap_skipped == 1
    lines = logged(caplog, "previous run still queued or running")
    expected = ("schedule busy: previous run still queued or running; skipped 1 fire time(s) "
                "(overlap=skip)")  # fmt: skip
    assert [(r.levelno, r.getMessage()) for r in lines] == [(logging.INFO, expected)]


async def test_a_schedule_that_cannot_fire_is_parked_with_one_line(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    scheduler = Scheduler(runtime)
    s = await scheduler.create({"name": "lost-zone", "function": "tests.noop",
                                "cron": "* * * * *", "timezone": "Europe/Berlin"})  # fmt: skip
    assert s.next_run_at is not None
    # A zone the process's tzdata no longer has (the row was valid when it was saved).
    assert await scheduler.store.update(s.app, s.id, {"timezone": "Nowhere/Atlantis"})
    stats = await SchedulerService(runtime).tick(s.next_run_at + dt.timedelta(seconds=1))
    assert stats.enqueued == 0
    assert (await scheduler.get(s.id)).next_run_at is None  # parked: no claim every tick
    lines = logged(caplog, "parked until edited")
    assert [r.getMessage() for r in lines] == [
        "schedule lost-zone: no next fire time (timezone: unknown timezone "
        "'Nowhere/Atlantis'); parked until edited"
    ]
    assert lines[0].levelno == logging.ERROR
