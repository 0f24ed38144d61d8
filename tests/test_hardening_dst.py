"""DST on a frozen clock: every-hour crons keep their cadence through both transitions.

Europe/Berlin, 2027: clocks spring forward on 28 March at 01:00Z (02:00 CET -> 03:00
CEST) and fall back on 31 October at 01:00Z (03:00 CEST -> 02:00 CET, so wall times
02:00-02:59 happen twice). Before the rule, `* * * * *` fired at 00:59Z and then not
until 02:00Z on 31 October: the second pass of the repeated hour was silent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from itertools import pairwise
from typing import Any

import pytest

from agentsched.jobs.runtime import Runtime
from agentsched.registry import import_task_modules
from agentsched.scheduling import service as scheduler_module
from agentsched.scheduling.rules import ScheduleSpec, next_fire, parse_spec, plan_fires, prev_fire
from agentsched.scheduling.service import Scheduler, SchedulerService
from agentsched.settings import Settings

UTC = dt.UTC
FALL = dt.datetime(2027, 10, 31, 1, 0, tzinfo=UTC)
SPRING = dt.datetime(2027, 3, 28, 1, 0, tzinfo=UTC)
HOUR, MINUTE = dt.timedelta(hours=1), dt.timedelta(minutes=1)


def berlin(cron: str) -> ScheduleSpec:
    return parse_spec({"name": "s", "function": "tests.noop", "cron": cron,
                       "timezone": "Europe/Berlin"})  # fmt: skip


def fires_between(s: ScheduleSpec, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    out, t = [], start
    while (t := next_fire(s, t)) <= end:
        out.append(t)
    return out


@pytest.mark.parametrize("change", [FALL, SPRING], ids=["fall_back", "spring_forward"])
@pytest.mark.parametrize(("cron", "step"), [("* * * * *", MINUTE), ("*/15 * * * *", 15 * MINUTE),
                                            ("0 * * * *", HOUR)])  # fmt: skip
def test_every_hour_crons_keep_their_cadence(cron: str, step: dt.timedelta, change) -> None:
    s = berlin(cron)
    got = fires_between(s, change - 3 * HOUR, change + 3 * HOUR)
    assert {b - a for a, b in pairwise(got)} == {step}
    assert len(got) == 6 * HOUR // step
    # prev_fire walks the same times backwards (catch-up plans rely on it).
    assert [prev_fire(s, b) for a, b in pairwise(got)] == got[:-1]


def test_fixed_times_still_run_once_in_the_repeated_hour_and_skip_the_missing_one() -> None:
    s = berlin("30 2 * * *")
    assert fires_between(s, FALL - 3 * HOUR, FALL + 3 * HOUR) == [FALL - 30 * MINUTE]  # CEST
    assert fires_between(s, SPRING - 3 * HOUR, SPRING + 3 * HOUR) == []  # 02:30 never exists
    hourly_at_two = berlin("15 2 * * *")
    assert fires_between(hourly_at_two, FALL - 3 * HOUR, FALL + 3 * HOUR) == [FALL - 45 * MINUTE]


def test_catch_up_over_the_repeated_hour_counts_both_passes() -> None:
    s = parse_spec({"name": "s", "function": "tests.noop", "cron": "*/15 * * * *",
                    "timezone": "Europe/Berlin", "misfire_policy": "run_all",
                    "max_catchup": 100})  # fmt: skip
    due = FALL - 2 * HOUR
    plan = plan_fires(s, due, FALL + 2 * HOUR)
    assert len(plan.runs) == 17 and len(set(plan.runs)) == 17  # 4 hours of quarters, no dup
    assert plan.runs == [due + i * 15 * MINUTE for i in range(17)]


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    import_task_modules(settings.task_modules)
    async with Runtime(settings) as rt:
        yield rt


@pytest.mark.parametrize("change", [FALL, SPRING], ids=["fall_back", "spring_forward"])
async def test_scheduler_loop_on_a_frozen_clock_across_the_change(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, change: dt.datetime
) -> None:
    clock = [change - 2 * HOUR - 30 * MINUTE]
    monkeypatch.setattr(scheduler_module, "_now", lambda: clock[0])
    scheduler = Scheduler(runtime)
    common = {"function": "tests.noop", "timezone": "Europe/Berlin", "overlap": "allow"}
    names = {"quarter": "*/15 * * * *", "hourly": "0 * * * *", "at-0230": "30 2 * * *"}
    ids = {(await scheduler.create({"name": n, "cron": c, **common})).id: n
           for n, c in names.items()}  # fmt: skip
    service = SchedulerService(runtime)
    runs: dict[str, list[dt.datetime]] = {n: [] for n in names}
    enqueue = service._queue.enqueue

    async def recording(function: str, *args: Any, **kwargs: Any) -> Any:
        runs[ids[kwargs["task_id"]]].append(kwargs["scheduled_for"])
        return await enqueue(function, *args, **kwargs)

    monkeypatch.setattr(service._queue, "enqueue", recording)
    end = change + 2 * HOUR + 30 * MINUTE
    while clock[0] < end:  # the clock moves a minute per tick; each tick sees only `now`
        clock[0] += MINUTE
        await service.tick(clock[0])
    quarter, hourly = sorted(runs["quarter"]), sorted(runs["hourly"])
    assert len(quarter) == 20 and {b - a for a, b in pairwise(quarter)} == {15 * MINUTE}
    assert len(hourly) == 5 and {b - a for a, b in pairwise(hourly)} == {HOUR}
    assert runs["at-0230"] == ([change - 30 * MINUTE] if change == FALL else [])
