"""After a downtime of any length, `skipped_runs` (GET /tasks/{id}) is the exact number
of fire times that were due and not run: every one the downtime held, less those the
misfire policy caught up. Counted, not walked: `agentsched.scheduling.counting`."""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from typing import Any

import pytest

from agentsched.jobs.runtime import Runtime
from agentsched.registry import import_task_modules
from agentsched.scheduling import service as scheduler_module
from agentsched.scheduling.counting import count_fires
from agentsched.scheduling.rules import _every_hour, next_fire, parse_spec, plan_fires, zone
from agentsched.scheduling.service import SchedulerService
from agentsched.settings import Settings
from tests.test_api_support import build_app, serve

UTC = dt.UTC
DUE = dt.datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)


def spec(**fields: Any) -> Any:
    return parse_spec({"name": "s", "function": "tests.noop", **fields})


def walked(s: Any, since: dt.datetime, until: dt.datetime) -> int:
    """Fire times in [since, until], one `next_fire` at a time (the slow, obvious way)."""
    count, t = 0, since - dt.timedelta(microseconds=1)
    while (t := next_fire(s, t)) <= until:
        count += 1
    return count


def office_hours(since: dt.datetime, until: dt.datetime, tz: str) -> int:
    """Fire times of `*/5 9-17 * * mon-fri` in [since, until], built day by day on the
    wall clock (no cron library: an independent count)."""
    day, count = since.astimezone(zone(tz)).date(), 0
    while day <= until.astimezone(zone(tz)).date():
        if day.weekday() < 5:
            walls = (dt.datetime(day.year, day.month, day.day, h, m, tzinfo=zone(tz))
                     for h in range(9, 18) for m in range(0, 60, 5))  # fmt: skip
            count += sum(1 for w in walls if since <= w <= until)
        day += DAY
    return count


@pytest.mark.parametrize(
    ("fields", "downtime"),
    [
        ({"cron": "* * * * *"}, 3 * DAY),
        ({"cron": "* * * * *", "timezone": "Europe/Berlin"}, 365 * DAY),  # both DST changes
        ({"cron": "*/5 9-17 * * mon-fri", "timezone": "America/New_York"}, 400 * DAY),
        ({"interval": 1}, 3 * HOUR),
    ],
    ids=["minutely-3-days", "minutely-berlin-a-year", "office-hours-400-days", "1s-3-hours"],
)
def test_missed_fire_times_are_counted_exactly_after_any_downtime(
    fields: dict[str, Any], downtime: dt.timedelta
) -> None:
    s = spec(misfire_policy="run_all", max_catchup=10, **fields)
    first = next_fire(s, DUE - dt.timedelta(seconds=1))
    now = first + downtime + dt.timedelta(seconds=0.5)
    if "interval" in fields:
        due = int(downtime.total_seconds()) + 1
    elif fields["cron"] == "* * * * *":  # every minute of UTC, whatever the zone's DST
        due = int(downtime.total_seconds()) // 60 + 1
    else:
        due = office_hours(first, now, fields["timezone"])
    started = time.perf_counter()
    plan = plan_fires(s, first, now)
    assert time.perf_counter() - started < 1.0  # counted, not walked
    assert len(plan.runs) == 10 and plan.caught_up >= 5  # the rest were on time
    assert plan.missed == due - 10


CRONS = ["* * * * *", "*/15 * * * *", "0 * * * *", "30 2 * * *", "15 1-3 * * *", "59 1 * * *",
         "*/20 1-2 * 10,11 *", "0,30 0-3 * * sun", "0 12 L * *", "0 9 * * 5#2", "0 3 15W * *",
         "45 23 1,15 * fri", "5 4 29 2 *"]  # fmt: skip
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham",
         "America/Santiago", "America/St_Johns", "Asia/Kolkata"]  # fmt: skip
# Around clock changes (Berlin, New York, Lord Howe, Santiago) and one quiet day.
NEAR = [dt.datetime(2027, 10, 31, 1, tzinfo=UTC), dt.datetime(2027, 3, 28, 1, tzinfo=UTC),
        dt.datetime(2027, 11, 7, 6, tzinfo=UTC), dt.datetime(2027, 4, 3, 15, tzinfo=UTC),
        dt.datetime(2027, 9, 5, 4, tzinfo=UTC), dt.datetime(2027, 6, 1, tzinfo=UTC)]  # fmt: skip


def test_counting_agrees_with_walking_every_fire_time_across_clock_changes() -> None:
    rng = random.Random(12)  # the same 150 cases on every run
    for _ in range(150):
        cron, tz = rng.choice(CRONS), rng.choice(ZONES)
        s = spec(cron=cron, timezone=tz)
        since = rng.choice(NEAR) + dt.timedelta(seconds=rng.randint(-2 * 86_400, 86_400))
        since += dt.timedelta(microseconds=rng.choice([0, 0, 500_000]))
        if rng.random() < 0.3:
            since = next_fire(s, since)  # from a fire time itself: it counts
        until = since + dt.timedelta(seconds=rng.choice([rng.randint(0, 7200),
                                                         rng.randint(0, 4 * 86_400)]))  # fmt: skip
        counted = count_fires(cron, zone(tz), since, until, both_passes=_every_hour(cron))
        assert counted == walked(s, since, until), (cron, tz, since, until)


@pytest.mark.parametrize(
    ("fields", "downtime", "due"),
    [({"cron": "* * * * *"}, 3 * DAY, 3 * 1440 + 1), ({"interval": 1}, 3 * HOUR, 3 * 3600 + 1)],
    ids=["minutely-3-days", "1s-3-hours"],
)
async def test_the_api_reports_every_skipped_fire_time(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    fields: dict[str, Any], downtime: dt.timedelta, due: int,
) -> None:  # fmt: skip
    import_task_modules(settings.task_modules)
    monkeypatch.setattr(scheduler_module, "_now", lambda: DUE - dt.timedelta(seconds=1))
    caplog.set_level(logging.INFO, "agentsched.scheduler")
    body = {"name": "downtime", "function": "tests.noop", "misfire_policy": "run_all",
            "max_catchup": 10, **fields}  # fmt: skip
    async with serve(build_app("create_app", settings)) as client, Runtime(settings) as runtime:
        created = (await client.post("/tasks", json=body)).json()
        assert created["next_run_at"] == DUE.isoformat().replace("+00:00", "Z")
        now = DUE + downtime + dt.timedelta(seconds=0.5)
        stats = await SchedulerService(runtime).tick(now)
        assert (stats.enqueued, stats.missed) == (10, due - 10)
        read = (await client.get(f"/tasks/{created['id']}")).json()
    assert read["skipped_runs"] == due - 10
    logged = f"schedule downtime: {due - 10} missed fire time(s) not run (misfire_policy=run_all)"
    assert logged in [r.getMessage() for r in caplog.records]
