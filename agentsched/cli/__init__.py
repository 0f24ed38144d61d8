"""The `agentsched` command: dev platform, worker, validate, enqueue, tasks, executions, events.

Commands that talk to Redis and the database read the `AGENTSCHED_*` environment, with
defaults from `config/agentsched.env` and, while `agentsched dev` runs in this directory,
its Redis and database URLs (`.agentsched/dev.env`). `--app-dir apps/<app>` acts for
that app: its `app.env` is loaded and its directory goes on the import path. A user's
mistake prints one line (`agentsched: ...`) and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import yaml

from agentsched import dev as dev_module
from agentsched.dev import SHARED_ENV, WORKER_LOG_DICT, Options, read_env_file, run_dev
from agentsched.errors import AgentschedError, ConfigError, ExecutionError, TasksFileError
from agentsched.registry import import_task_modules, registered

DEV_ENV = Path(".agentsched/dev.env")


def _fail(message: str, code: int = 1) -> int:
    print(f"agentsched: {message}", file=sys.stderr)
    return code


def _dev_running(values: dict[str, str]) -> bool:
    try:
        os.kill(int(values.get("AGENTSCHED_DEV_PID", "0")), 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    return True


def app_environment(app_dir: str | None) -> dict[str, str]:
    """The environment for acting as an app: shared defaults, `dev.env`, the app's `app.env`."""
    env = dict(os.environ)
    if DEV_ENV.is_file() and _dev_running(dev := read_env_file(DEV_ENV)):
        for key in ("AGENTSCHED_REDIS_URL", "AGENTSCHED_DATABASE_URL"):
            env.setdefault(key, dev[key])
    if SHARED_ENV.is_file():
        for key, value in read_env_file(SHARED_ENV).items():
            env.setdefault(key, value)
    if app_dir is not None:
        directory = Path(app_dir)
        if not (directory / "app.env").is_file():
            raise ConfigError(f"--app-dir {app_dir}: no app.env there")
        env.update(read_env_file(directory / "app.env"))
        path = [str(directory.resolve()), os.getcwd(), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    return env


def _use_environment(app_dir: str | None) -> None:
    """Make this process act for the app (environment and import path)."""
    env = app_environment(app_dir)
    os.environ.update(env)
    for entry in reversed([os.getcwd(), *env.get("PYTHONPATH", "").split(os.pathsep)]):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)


# --- validate ----------------------------------------------------------------------------
def _line_of(path: Path, key: str, task_name: str | None = None) -> str:
    """` (line N)` of `key` at the top level or in the named task, for error messages."""
    root = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    pairs = getattr(root, "value", [])
    if task_name is not None:
        tasks = next((v for k, v in pairs if k.value == "tasks"), None)
        items = [getattr(item, "value", []) for item in getattr(tasks, "value", [])]
        named = (p for p in items if any(k.value == "name" and v.value == task_name for k, v in p))
        pairs = next(named, [])
    line = next((int(k.start_mark.line) + 1 for k, _ in pairs if k.value == key), None)
    return f" (line {line})" if line else ""


def validate_file(path: Path, modules: list[str] | None = None) -> int:
    """Check a tasks file against its app's own task modules; the number of tasks."""
    from agentsched.scheduling.tasks_file import parse_tasks_file

    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    env_file = path.parent / "app.env"
    app_env = read_env_file(env_file) if modules is None and env_file.is_file() else {}
    if modules is None:
        if not env_file.is_file():
            raise ConfigError(
                f"{path}: no app.env beside it names the task modules (use --modules)"
            )
        modules = [
            m.strip() for m in app_env.get("AGENTSCHED_TASK_MODULES", "").split(",") if m.strip()
        ]
        if not modules:
            raise ConfigError(f"{env_file}: AGENTSCHED_TASK_MODULES is empty")
    for entry in (os.getcwd(), str(path.parent.resolve())):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        import_task_modules(modules)
    except ConfigError as exc:
        raise ConfigError(f"{env_file}: {exc}") from None
    parsed = parse_tasks_file(path, check_functions=True)
    expected = app_env.get("AGENTSCHED_APP")
    if expected and parsed.app != expected:
        where = _line_of(path, "app")
        message = f"is {parsed.app!r} but {env_file} says {expected!r}{where}"
        raise TasksFileError(str(path), message, field="app")
    tasks = registered()
    for spec in parsed.tasks:  # registered, but maybe by another app's modules
        owner = tasks[spec.function].func.__module__
        if not any(owner == m or owner.startswith(m + ".") for m in modules):
            where = _line_of(path, "function", spec.name)
            message = f"{spec.function!r} is a task of {owner}, not of {', '.join(modules)}{where}"
            raise TasksFileError(str(path), message, task=spec.name, field="function")
    return len(parsed.tasks)


def cmd_validate(args: argparse.Namespace) -> int:
    modules = [m.strip() for m in args.modules.split(",") if m.strip()] if args.modules else None
    failed = 0
    for file in args.files:
        try:
            count = validate_file(Path(file), modules)
        except AgentschedError as exc:
            failed += 1
            _fail(str(exc))
            continue
        print(f"ok: {file} ({count} task{'s' if count != 1 else ''})")
    return 1 if failed else 0


# --- commands against the services -----------------------------------------------------
def _json_arg(text: str, name: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--{name}: not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, kind):
        raise ConfigError(f"--{name}: must be a JSON {'array' if kind is list else 'object'}")
    return value


def _show(execution: Any) -> str:
    keys = ("id", "function", "status", "attempt", "result", "error")
    return json.dumps({k: getattr(execution, k) for k in keys}, default=str)


async def cmd_enqueue(args: argparse.Namespace) -> int:
    from agentsched.jobs.queue import TaskQueue

    call_args = _json_arg(args.args, "args", list)
    call_kwargs = _json_arg(args.kwargs, "kwargs", dict)
    async with TaskQueue() as queue:
        execution = await queue.enqueue(args.function, call_args, call_kwargs, delay=args.delay,
                                        metadata={"by": "agentsched-cli"})  # fmt: skip
        if not args.wait:
            print(_show(execution))
            return 0
        try:
            await queue.get_result(execution.id, timeout=args.timeout)
        except ExecutionError:
            print(_show(await queue.get_execution(execution.id)))
            return 1
        print(_show(await queue.get_execution(execution.id)))
    return 0


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


async def cmd_tasks(args: argparse.Namespace) -> int:
    from agentsched.jobs.runtime import Runtime
    from agentsched.scheduling.service import Scheduler

    async with Runtime() as runtime:
        items, total = await Scheduler(runtime).list(limit=args.limit)
    rows = [
        [s.name, s.function, s.cron or f"every {s.interval_seconds:g}s", s.timezone,
         "yes" if s.enabled else "no", s.source, _when(s.next_run_at)]
        for s in items
    ]  # fmt: skip
    _table(rows, ["NAME", "FUNCTION", "SCHEDULE", "TZ", "ENABLED", "SOURCE", "NEXT RUN (UTC)"])
    print(f"{total} schedule(s)")
    return 0


async def cmd_executions(args: argparse.Namespace) -> int:
    from agentsched.jobs.queue import TaskQueue

    async with TaskQueue() as queue:
        items, total = await queue.list_executions(
            status=args.status or (), function=args.function, limit=args.limit
        )
    rows = [[e.id, e.function, e.status.value, str(e.attempt), _when(e.enqueued_at),
             _when(e.finished_at), (e.error or "").split("\n")[0][:60]] for e in items]  # fmt: skip
    _table(rows, ["ID", "FUNCTION", "STATUS", "TRY", "ENQUEUED", "FINISHED", "ERROR"])
    print(f"{len(items)} of {total} execution(s)")
    return 0


async def cmd_events_tail(args: argparse.Namespace) -> int:
    from agentsched.events import EventBus

    async with EventBus() as bus:
        async for event in bus.tail(*args.patterns, from_id=args.from_id):
            target = event.target_agent or "*"
            print(f"{event.created_at:%H:%M:%S} {event.event_type} {event.source_agent}->{target} "
                  f"{json.dumps(event.payload, default=str)[:500]}", flush=True)  # fmt: skip
    return 0


# --- parser --------------------------------------------------------------------------------
def _add_app_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app-dir", metavar="DIR", help="act for the app in DIR (load its app.env, import from it)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentsched", description="Async task scheduler, "
                                     "queue and event bus for agent apps.")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev = sub.add_parser("dev", help="run the whole platform locally (embedded Redis, SQLite)",
                         description=dev_module.__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    dev.add_argument("--apps", help="comma-separated subset of apps/* to run (default: all)")
    dev.add_argument("--base-port", type=int, default=8001, help="port of the first app (8001)")
    dev.add_argument("--redis-port", type=int, default=6390,
                     help="port of the embedded Redis (6390; 0 = any free port)")  # fmt: skip
    dev.add_argument("--state-dir", default=".agentsched", help="data dir (.agentsched)")
    dev.add_argument("--ready-timeout", type=float, default=90.0, help="seconds to become ready")
    worker = sub.add_parser("worker", help="run a worker: arq agentsched.WorkerSettings")
    _add_app_dir(worker)
    worker.add_argument("arq_args", nargs=argparse.REMAINDER, help="extra arq options (--burst)")
    validate = sub.add_parser("validate", help="check tasks files, with no environment set")
    validate.add_argument("files", nargs="+", metavar="FILE", help="tasks.yaml files")
    validate.add_argument("--modules", help="task modules to import (default: app.env beside FILE)")
    enqueue = sub.add_parser("enqueue", help="queue a registered task function")
    enqueue.add_argument("function", help="registered task name, e.g. scraper.fetch_page")
    enqueue.add_argument("--args", default="[]", help="positional arguments as a JSON array")
    enqueue.add_argument("--kwargs", default="{}", help="keyword arguments as a JSON object")
    enqueue.add_argument("--delay", type=float, help="seconds to wait before it may run")
    enqueue.add_argument(
        "--wait", action="store_true", help="wait for the result; exit 1 if it fails"
    )
    enqueue.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits (60)")
    _add_app_dir(enqueue)
    tasks = sub.add_parser("tasks", help="list the app's schedules")
    tasks.add_argument("--limit", type=int, default=200)
    _add_app_dir(tasks)
    execs = sub.add_parser("executions", help="list the app's executions, newest first")
    execs.add_argument("--status", action="append", choices=["queued", "running", "success",
                       "failed", "cancelled"], help="only this status (repeatable)")  # fmt: skip
    execs.add_argument("--function", help="only this task function")
    execs.add_argument("--limit", type=int, default=20)
    _add_app_dir(execs)
    events = sub.add_parser("events", help="follow the event bus")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    tail = events_sub.add_parser("tail", help="print events as they are published (Ctrl-C stops)")
    tail.add_argument("patterns", nargs="*", metavar="PATTERN", help="e.g. 'task.*' (default all)")
    tail.add_argument("--from", dest="from_id", default="$", help="'$' (now), '0' or a stream id")
    return parser


def _exec_worker(args: argparse.Namespace) -> int:
    env = app_environment(args.app_dir)
    extra = [a for a in args.arq_args if a != "--"]
    argv = [sys.executable, "-m", "arq", "agentsched.WorkerSettings",
            "--custom-log-dict", WORKER_LOG_DICT, *extra]  # fmt: skip
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)


def run(args: argparse.Namespace) -> int:
    if args.command == "validate":
        return cmd_validate(args)
    if args.command == "dev":
        apps = [a.strip() for a in args.apps.split(",") if a.strip()] if args.apps else None
        options = Options(apps, args.base_port, args.redis_port, Path(args.state_dir),
                          args.ready_timeout)  # fmt: skip
        return run_dev(options)
    if args.command == "worker":
        return _exec_worker(args)
    _use_environment(getattr(args, "app_dir", None))
    handler = {"enqueue": cmd_enqueue, "tasks": cmd_tasks, "executions": cmd_executions,
               "events": cmd_events_tail}[args.command]  # fmt: skip
    return asyncio.run(until_signal(handler(args), 0 if args.command == "events" else 130))


async def until_signal(work: Coroutine[Any, Any, int], interrupted: int) -> int:
    """Run `work`; SIGINT or SIGTERM cancel it and give `interrupted` as the exit code.

    The cancel comes from a loop signal handler: asyncio.run's own SIGINT handling cancels
    from inside the signal, which can be lost in a blocking redis-py read (XREAD).
    """
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return interrupted
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `agentsched` script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except AgentschedError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))


if __name__ == "__main__":
    sys.exit(main())
