"""Commands on executions: enqueue, show, cancel, retry, run-again, executions (the history).

`--wait` polls the execution, prints each change of status or progress on stderr and
gives up after `--timeout` seconds (one line, exit 1). An error is shown by its first
line; `--traceback` shows all of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from agentsched.cli.context import app_of, json_arg, run_async, table, to_json, use_environment
from agentsched.cli.context import when as _when
from agentsched.errors import Conflict

if TYPE_CHECKING:
    from agentsched.execution import Execution
    from agentsched.jobs.queue import TaskQueue

FIELDS = (
    "id",
    "app",
    "function",
    "status",
    "attempt",
    "max_tries",
    "args",
    "kwargs",
    "result",
    "error",
    "error_kind",
    "progress",
    "progress_message",
    "task_id",
    "scheduled_for",
    "enqueued_at",
    "started_at",
    "finished_at",
    "metadata",
)


def _error(execution: Execution, full: bool) -> str | None:
    if not execution.error:
        return execution.error
    return execution.error if full else execution.error.strip().splitlines()[0]


def record(execution: Execution, full_error: bool = False) -> dict[str, Any]:
    """The execution as a JSON-ready dict (the error's first line unless `full_error`)."""
    data = {name: getattr(execution, name) for name in FIELDS}
    data["status"] = execution.status.value
    data["error_kind"] = execution.error_kind.value if execution.error_kind else None
    data["error"] = _error(execution, full_error)
    return data


def _progress(execution: Execution) -> str:
    parts = [
        f"{execution.progress:.0%}" if execution.progress is not None else "",
        execution.progress_message or "",
    ]
    return " ".join(p for p in parts if p)


def print_execution(execution: Execution, args: argparse.Namespace) -> None:
    full = bool(getattr(args, "traceback", False))
    if getattr(args, "json", False):
        print(to_json(record(execution, full)))
        return
    status = f"{execution.status.value} (attempt {execution.attempt} of {execution.max_tries})"
    rows = [("execution", execution.id), ("function", execution.function), ("status", status)]
    if _progress(execution):
        rows.append(("progress", _progress(execution)))
    for name in ("enqueued_at", "started_at", "finished_at"):
        if getattr(execution, name) is not None:
            rows.append((name.removesuffix("_at"), _when(getattr(execution, name)) + " UTC"))
    if execution.status.value == "success":
        rows.append(("result", to_json(execution.result)))
    if execution.error:
        kind = f" [{execution.error_kind.value}]" if execution.error_kind else ""
        rows.append(("error", f"{_error(execution, False)}{kind}"))
    for name, value in rows:
        print(f"{name:<10} {value}")
    if full and execution.error and "\n" in execution.error.strip():
        print(execution.error.rstrip())
    elif execution.error and "\n" in execution.error.strip():
        print("(--traceback shows the whole error)")


async def wait_for(queue: TaskQueue, execution: Execution, args: argparse.Namespace) -> int:
    """Follow `execution` until it ends or `--timeout` passes; print it; the exit code."""
    import asyncio

    deadline = time.monotonic() + args.timeout
    seen = ""
    while True:
        execution = await queue.get_execution(execution.id)
        tries = f"(attempt {execution.attempt} of {execution.max_tries})"
        state = " ".join(filter(None, [execution.status.value, _progress(execution),
                                       tries if execution.max_tries > 1 else ""]))  # fmt: skip
        if state != seen:
            seen = state
            print(f"agentsched: {execution.id} {state}", file=sys.stderr, flush=True)
        if execution.is_terminal:
            break
        if time.monotonic() >= deadline:
            print(
                f"agentsched: {execution.id} is still {execution.status.value} after "
                f"{args.timeout:g}s; follow it with: agentsched show {execution.id}",
                file=sys.stderr,
            )
            return 1
        await asyncio.sleep(0.1 if time.monotonic() + 0.1 < deadline else 0.01)
    print_execution(execution, args)
    return 0 if execution.status.value == "success" else 1


async def _queued(queue: TaskQueue, execution: Execution, args: argparse.Namespace) -> int:
    if args.wait:
        return await wait_for(queue, execution, args)
    if args.json:
        print(to_json(record(execution)))
    else:
        print(f"queued {execution.id} {execution.function}  (agentsched show {execution.id})")
    return 0


def _queue() -> TaskQueue:
    from agentsched.jobs.queue import TaskQueue

    return TaskQueue()


def enqueue(args: argparse.Namespace) -> int:
    call_args = json_arg(args.args, "args", list)
    call_kwargs = json_arg(args.kwargs, "kwargs", dict)
    use_environment(app_of(args))

    async def work() -> int:
        async with _queue() as queue:
            execution = await queue.enqueue(
                args.function,
                call_args,
                call_kwargs,
                delay=args.delay,
                metadata={"by": "agentsched-cli"},
            )
            return await _queued(queue, execution, args)

    return run_async(work)


def show(args: argparse.Namespace) -> int:
    use_environment(app_of(args))

    async def work() -> int:
        async with _queue() as queue:
            print_execution(await queue.get_execution(args.id), args)
        return 0

    return run_async(work)


def cancel(args: argparse.Namespace) -> int:
    use_environment(app_of(args))

    async def work() -> int:
        async with _queue() as queue:
            if not await queue.cancel(args.id):
                execution = await queue.get_execution(args.id)
                raise Conflict(f"execution {execution.id} already ended {execution.status.value}")
            execution = await queue.get_execution(args.id)
            if args.json:
                print(to_json(record(execution)))
            else:
                print(f"cancelled {execution.id} {execution.function}")
        return 0

    return run_async(work)


def retry(args: argparse.Namespace) -> int:
    return _again(args, retry=True)


def run_again(args: argparse.Namespace) -> int:
    return _again(args, retry=False)


def _again(args: argparse.Namespace, *, retry: bool) -> int:
    """`retry` (of a failed or cancelled run only, as the API's) and `run-again` (any run)."""
    from agentsched.api.again import enqueue_again

    use_environment(app_of(args))

    async def work() -> int:
        async with _queue() as queue:
            execution = await enqueue_again(queue, args.id, retry=retry)
            return await _queued(queue, execution, args)

    return run_async(work)


def history(args: argparse.Namespace) -> int:
    use_environment(app_of(args))

    async def work() -> int:
        async with _queue() as queue:
            items, total = await queue.list_executions(
                status=args.status or (), function=args.function, limit=args.limit
            )
        if args.json:
            print(to_json({"items": [record(e) for e in items], "total": total}))
            return 0
        rows = [
            [
                e.id,
                e.function,
                e.status.value,
                str(e.attempt),
                _when(e.enqueued_at),
                _when(e.finished_at),
                (_error(e, False) or "")[:60],
            ]
            for e in items
        ]
        table(rows, ["ID", "FUNCTION", "STATUS", "TRY", "ENQUEUED", "FINISHED", "ERROR"])
        print(f"{len(items)} of {total} execution(s)")
        return 0

    return run_async(work)
