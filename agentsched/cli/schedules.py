"""Commands on the app's schedules, by name: tasks (list), run, enable, disable."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from agentsched.cli.context import app_of, run_async, table, to_json, use_environment, when
from agentsched.errors import InvalidInput

if TYPE_CHECKING:
    from agentsched.db.schedules import Schedule
    from agentsched.scheduling.service import Scheduler


@asynccontextmanager
async def _scheduler() -> AsyncIterator[Scheduler]:
    from agentsched.jobs.runtime import Runtime
    from agentsched.registry import import_task_modules
    from agentsched.scheduling.service import Scheduler
    from agentsched.settings import get_settings

    import_task_modules(get_settings().task_modules)  # run_now checks the task name
    async with Runtime() as runtime:
        yield Scheduler(runtime)


async def by_name(scheduler: Scheduler, name: str) -> Schedule:
    items, _ = await scheduler.list(limit=1000)
    found = next((s for s in items if s.name == name), None)
    if found is None:
        known = ", ".join(s.name for s in items) or "none"
        raise InvalidInput(
            "name", f"no schedule {name!r} in app {scheduler.app!r} (known: {known})"
        )
    return found


def _data(schedule: Schedule) -> dict[str, object]:
    return dataclasses.asdict(schedule)


def list_tasks(args: argparse.Namespace) -> int:
    use_environment(app_of(args))

    async def work() -> int:
        async with _scheduler() as scheduler:
            items, total = await scheduler.list(limit=args.limit)
        if args.json:
            print(to_json({"items": [_data(s) for s in items], "total": total}))
            return 0
        rows = [
            [
                s.name,
                s.function,
                s.cron or f"every {s.interval_seconds:g}s",
                s.timezone,
                "yes" if s.enabled else "no",
                s.source,
                when(s.next_run_at),
            ]
            for s in items
        ]
        table(rows, ["NAME", "FUNCTION", "SCHEDULE", "TZ", "ENABLED", "SOURCE", "NEXT RUN (UTC)"])
        print(f"{total} schedule(s)")
        return 0

    return run_async(work)


def run(args: argparse.Namespace) -> int:
    from agentsched.cli.executions import record, wait_for

    use_environment(app_of(args))

    async def work() -> int:
        from agentsched.jobs.queue import TaskQueue

        async with _scheduler() as scheduler:
            execution = await scheduler.run_now((await by_name(scheduler, args.name)).id)
            if args.wait:
                async with TaskQueue(runtime=scheduler.runtime) as queue:
                    return await wait_for(queue, execution, args)
        if args.json:
            print(to_json(record(execution)))
        else:
            print(f"queued {execution.id} {execution.function}  (agentsched show {execution.id})")
        return 0

    return run_async(work)


def toggle(args: argparse.Namespace) -> int:
    use_environment(app_of(args))

    async def work() -> int:
        async with _scheduler() as scheduler:
            schedule = await by_name(scheduler, args.name)
            if args.enabled == "enable":
                schedule = await scheduler.enable(schedule.id)
            else:
                schedule = await scheduler.disable(schedule.id)
        state = "enabled" if schedule.enabled else "disabled"
        print(
            f"{schedule.name} {state}; next run {when(schedule.next_run_at)} UTC"
            if schedule.enabled
            else f"{schedule.name} {state}"
        )
        return 0

    return run_async(work)
