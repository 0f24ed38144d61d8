"""The argument parser of `agentsched`: only argparse, so `--help` answers at once.

Each command names its handler as `"module:function"` (a module of this package),
imported only when that command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

STATUSES = ["queued", "running", "success", "failed", "cancelled"]


class VersionAction(argparse.Action):
    """`--version`: the installed distribution's version, read only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from importlib.metadata import version

        print(f"agentsched {version('agentsched')}")
        parser.exit(0)


def _app_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app-dir", metavar="DIR", help="act for the app in DIR (load its app.env, import from it)"
    )


def _json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait for the end, showing progress; exit 1 unless it succeeds",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds --wait waits before giving up (default 60)",
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="show the whole error of a failed execution, not its first line",
    )


def _command(sub: Any, name: str, handler: str, help_text: str, **kw: Any) -> Any:
    parser = sub.add_parser(name, help=help_text, description=kw.pop("description", help_text))
    parser.set_defaults(handler=handler, **kw)
    return parser


def _services(sub: Any) -> None:
    enqueue = _command(sub, "enqueue", "executions:enqueue", "queue a registered task function")
    enqueue.add_argument("function", help="registered task name, e.g. scraper.fetch_page")
    enqueue.add_argument("--args", default="[]", help="positional arguments as a JSON array")
    enqueue.add_argument("--kwargs", default="{}", help="keyword arguments as a JSON object")
    enqueue.add_argument("--delay", type=float, help="seconds to wait before it may run")
    for parser in (enqueue,):
        _wait(parser)
    show = _command(sub, "show", "executions:show", "one execution: status, progress, error")
    show.add_argument("id", help="execution id")
    show.add_argument("--traceback", action="store_true", help="show the whole error")
    cancel = _command(sub, "cancel", "executions:cancel", "cancel a queued or running execution")
    cancel.add_argument("id", help="execution id")
    retry = _command(
        sub,
        "retry",
        "executions:retry",
        "queue a failed or cancelled execution again, with its arguments",
    )
    retry.add_argument("id", help="execution id of a failed or cancelled run")
    again = _command(
        sub,
        "run-again",
        "executions:run_again",
        "queue any execution's function again, with its arguments",
    )
    again.add_argument("id", help="execution id")
    for parser in (retry, again):
        _wait(parser)
    execs = _command(
        sub, "executions", "executions:history", "list the app's executions, newest first"
    )
    execs.add_argument(
        "--status", action="append", choices=STATUSES, help="only this status (repeatable)"
    )
    execs.add_argument("--function", help="only this task function")
    execs.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    tasks = _command(sub, "tasks", "schedules:list_tasks", "list the app's schedules")
    tasks.add_argument("--limit", type=int, default=200, help="how many (default 200)")
    run = _command(sub, "run", "schedules:run", "run a schedule's task now, outside its timing")
    run.add_argument("name", help="schedule name (agentsched tasks lists them)")
    _wait(run)
    for name, verb in (("enable", "enable"), ("disable", "disable")):
        toggle = _command(sub, name, "schedules:toggle", f"{verb} a schedule", enabled=name)
        toggle.add_argument("name", help="schedule name")
        _app_dir(toggle)
    workers = _command(sub, "workers", "platform:workers", "the app's workers and heartbeats")
    letters = _command(
        sub,
        "dead-letters",
        "platform:dead_letters",
        "events the app's consumers gave up on; --replay one",
    )
    letters.add_argument("--replay", metavar="ENTRY_ID", help="publish this dead letter again")
    letters.add_argument("--all-apps", action="store_true", help="every app's, not only this one's")
    letters.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    events = sub.add_parser("events", help="follow the event bus", description="the event bus")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    tail = _command(
        events_sub,
        "tail",
        "platform:events_tail",
        "print events as they are published (Ctrl-C stops)",
    )
    tail.add_argument("patterns", nargs="*", metavar="PATTERN", help="e.g. 'task.*' (default all)")
    tail.add_argument("--from", dest="from_id", default="$", help="'$' (now), '0' or a stream id")
    for parser in (enqueue, show, cancel, retry, again, execs, tasks, run, workers, letters, tail):
        _app_dir(parser)
    for parser in (enqueue, show, cancel, retry, again, execs, tasks, run, workers, letters, tail):
        _json(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentsched",
        description="Async task scheduler, queue and event bus for agent apps. Commands that "
        "use Redis and the database find a running `agentsched dev` from any directory, or "
        "use AGENTSCHED_REDIS_URL and AGENTSCHED_DATABASE_URL.",
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev = _command(
        sub,
        "dev",
        "platform:dev",
        "run the whole platform locally (embedded Redis, SQLite)",
        description="Run the whole platform locally: embedded Redis (unless "
        "AGENTSCHED_REDIS_URL is set), SQLite (unless AGENTSCHED_DATABASE_URL is "
        "set), and an API and a worker per app under apps/. Run it in the "
        "repository root; Ctrl-C stops everything.",
    )
    dev.add_argument("--apps", help="comma-separated subset of apps/* to run (default: all)")
    dev.add_argument("--base-port", type=int, default=8001, help="port of the first app (8001)")
    dev.add_argument(
        "--redis-port",
        type=int,
        default=6390,
        help="port of the embedded Redis (6390; 0 = any free port)",
    )
    dev.add_argument("--state-dir", default=".agentsched", help="data dir (.agentsched)")
    dev.add_argument(
        "--ready-timeout",
        type=float,
        default=90.0,
        help="seconds the platform may take to become ready (90)",
    )
    worker = _command(
        sub, "worker", "platform:worker", "run a worker: arq agentsched.WorkerSettings"
    )
    _app_dir(worker)
    worker.add_argument("arq_args", nargs=argparse.REMAINDER, help="extra arq options (--burst)")
    env = _command(
        sub, "env", "platform:env", "export lines for the running platform's Redis and database",
        description="Print `export` lines of the Redis and database URLs a command here would "
        "use (a running `agentsched dev`'s): `eval \"$(agentsched env)\"` points this shell's "
        "own code, `arq agentsched.WorkerSettings` included, at the platform.",
    )  # fmt: skip
    _app_dir(env)
    validate = _command(
        sub, "validate", "validate:validate", "check tasks files, with no environment set"
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="tasks.yaml files")
    validate.add_argument("--modules", help="task modules to import (default: app.env beside FILE)")
    _services(sub)
    return parser
