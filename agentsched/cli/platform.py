"""Commands on the platform: dev, worker, workers, dead-letters, events tail (`--json`:
one event's JSON object a line).

`events tail` follows the platform it found: when that `agentsched dev` stops or
restarts (its state file changes, e.g. a new embedded Redis port), the tail moves to
the new one, or stops with one line when none runs, instead of retrying a dead Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from agentsched.cli.context import (
    app_environment,
    app_of,
    run_async,
    table,
    to_json,
    use_environment,
)
from agentsched.dev_state import DevState, find_dev

STATE_POLL = 0.5  # seconds between checks of the platform's state file


def dev(args: argparse.Namespace) -> int:
    from agentsched.dev import Options, run_dev

    apps = [a.strip() for a in args.apps.split(",") if a.strip()] if args.apps else None
    options = Options(
        apps, args.base_port, args.redis_port, Path(args.state_dir), args.ready_timeout
    )
    return run_dev(options)


def worker(args: argparse.Namespace) -> int:
    from agentsched.dev import WORKER_LOG_DICT

    env = app_environment(args.app_dir).env
    extra = [a for a in args.arq_args if a != "--"]
    argv = [
        sys.executable,
        "-m",
        "arq",
        "agentsched.WorkerSettings",
        "--custom-log-dict",
        WORKER_LOG_DICT,
        *extra,
    ]
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)


def env(args: argparse.Namespace) -> int:
    """`eval "$(agentsched env)"`: the URLs a command here would use, as shell exports."""
    found = app_environment(args.app_dir).env  # one line and exit 1 when there are none
    for key in ("AGENTSCHED_REDIS_URL", "AGENTSCHED_DATABASE_URL"):
        if key in found:
            print(f"export {key}={shlex.quote(found[key])}")
    return 0


def workers(args: argparse.Namespace) -> int:
    use_environment(app_of(args))

    async def work() -> int:
        from agentsched.jobs.queue import TaskQueue

        async with TaskQueue() as queue:
            key = queue.tracker.keys.workers
            beats = await queue.runtime.redis.zrange(key, 0, -1, withscores=True)
            lease = queue.settings.lease_seconds
        now = time.time()
        items = []
        for raw, score in sorted(beats, key=lambda b: -b[1]):
            ident = raw.decode() if isinstance(raw, bytes) else str(raw)
            age = max(now - score / 1000, 0.0)
            items.append({"id": ident, "heartbeat_age": round(age, 1), "live": age <= 3 * lease})
        if args.json:
            print(to_json({"items": items, "total": len(items)}))
            return 0
        rows = [
            [w["id"], f"{w['heartbeat_age']}s ago", "live" if w["live"] else "gone"] for w in items
        ]
        table(rows, ["WORKER", "HEARTBEAT", "STATE"])
        print(f"{sum(1 for w in items if w['live'])} live worker(s)")
        return 0

    return run_async(work)


def dead_letters(args: argparse.Namespace) -> int:
    use_environment(app_of(args))

    async def work() -> int:
        from agentsched.events import EventBus

        async with EventBus() as bus:
            if args.replay:
                event = await bus.replay_dead_letter(args.replay)
                if args.json:
                    print(event.model_dump_json())
                else:
                    print(
                        f"replayed {args.replay} as event {event.id} ({event.event_type}) "
                        f"to {event.target_agent}"
                    )
                return 0
            group = None if args.all_apps else bus.agent
            letters = await bus.dead_letters(args.limit, group=group)
        if args.json:
            items = [json.loads(letter.model_dump_json()) for letter in letters]
            print(to_json({"items": items, "total": len(items)}))
            return 0
        rows = [
            [
                d.entry_id,
                d.group,
                d.event.event_type if d.event else "(malformed)",
                str(d.deliveries),
                d.reason[:60],
            ]
            for d in letters
        ]
        table(rows, ["ENTRY", "APP", "EVENT", "TRIES", "REASON"])
        print(f"{len(letters)} dead letter(s); replay one with --replay ENTRY")
        return 0

    return run_async(work)


async def _watch(state: DevState) -> None:
    """Return once the platform `state` describes has stopped or changed."""
    while True:
        if not await asyncio.to_thread(state.still_current):
            return
        await asyncio.sleep(STATE_POLL)


class _WhilePlatformRuns(logging.Filter):
    """Outage lines of a tail that follows a dev platform, only while the platform runs:
    `agentsched dev` removes its state file before it stops its Redis, so a Redis gone
    with the platform is the platform's end (said in one line), not an outage."""

    def __init__(self, state: DevState) -> None:
        super().__init__()
        self.state = state

    def filter(self, record: logging.LogRecord) -> bool:
        return self.state.still_current()


async def _tail(args: argparse.Namespace, redis_url: str | None, from_id: str) -> None:
    from agentsched.events import EventBus
    from agentsched.settings import get_settings, mask_url

    settings = get_settings()
    if redis_url is not None:
        settings = settings.model_copy(update={"redis_url": redis_url})
    async with EventBus(settings=settings) as bus:
        if from_id == "$":  # pinned before saying so: what is published next is shown
            from_id = await bus.newest_id()
        print(f"agentsched: following events at {mask_url(settings.redis_url)} (Ctrl-C stops)",
              file=sys.stderr, flush=True)  # fmt: skip
        async for event in bus.tail(*args.patterns, from_id=from_id):
            if args.json:  # one EventMessage a line, as a program reading the tail wants it
                print(event.model_dump_json(), flush=True)
                continue
            target = event.target_agent or "*"
            print(
                f"{event.created_at:%H:%M:%S} {event.event_type} {event.source_agent}->{target} "
                f"{json.dumps(event.payload, default=str)[:500]}",
                flush=True,
            )


def events_tail(args: argparse.Namespace) -> int:
    target = use_environment(app_of(args))
    starts = [Path(p) for p in (app_of(args), os.getcwd()) if p]

    async def work() -> int:
        state, redis_url, from_id = target.dev, None, args.from_id
        if state is not None:
            quiet = _WhilePlatformRuns(state)
            logging.getLogger("agentsched.redis").addFilter(quiet)
        while True:
            tail = asyncio.create_task(_tail(args, redis_url, from_id))
            if state is None:
                await tail
                return 0
            watch = asyncio.create_task(_watch(state))
            try:
                await asyncio.wait({tail, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (tail, watch):
                    task.cancel()
                await asyncio.gather(tail, watch, return_exceptions=True)
            failed = tail.exception() if tail.done() and not tail.cancelled() else None
            if failed is not None:
                raise failed
            old = state
            state = await asyncio.to_thread(find_dev, *starts)
            if state is None:
                print(
                    f"agentsched: the dev platform (pid {old.pid}) stopped; events tail ends",
                    file=sys.stderr,
                )
                return 1
            print(
                "agentsched: the dev platform restarted",
                file=sys.stderr,
                flush=True,
            )
            redis_url, from_id, quiet.state = state.redis_url, "$", state

    return run_async(work, interrupted=0)
