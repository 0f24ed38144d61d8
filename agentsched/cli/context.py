"""What every service command shares: finding the platform, the app's environment,
output (text tables or `--json`) and Ctrl-C handling."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentsched.dev_state import SHARED_ENV, DevState, find_dev, read_env_file, repo_root
from agentsched.errors import ConfigError

DEFAULTS = "redis://localhost:6379/0 and sqlite+aiosqlite:///./agentsched.db"


@dataclass
class Target:
    """The environment a command acts in, and the platform it was found in (if any)."""

    env: dict[str, str]
    dev: DevState | None


def app_environment(app_dir: str | None, *, need_services: bool = True) -> Target:
    """Shared defaults, the running platform's URLs and the app's `app.env`, over os.environ.

    Explicit `AGENTSCHED_*` variables win. Without them and without a running platform, a
    command that needs services stops with one line rather than quietly using the
    library defaults (a Redis that may not be the platform's, a new ./agentsched.db).
    """
    env = dict(os.environ)
    directory = Path(app_dir) if app_dir is not None else None
    if directory is not None and not (directory / "app.env").is_file():
        raise ConfigError(f"--app-dir {app_dir}: no app.env there")
    starts = [p for p in (directory, Path.cwd()) if p is not None]
    dev = find_dev(*starts)
    root = (dev.root if dev else None) or next(filter(None, map(repo_root, starts)), None)
    shared = read_env_file(root / SHARED_ENV) if root and (root / SHARED_ENV).is_file() else {}
    explicit = "AGENTSCHED_REDIS_URL" in env or "AGENTSCHED_REDIS_URL" in shared
    if dev is not None and not explicit:
        env.setdefault("AGENTSCHED_REDIS_URL", dev.redis_url)
        env.setdefault("AGENTSCHED_DATABASE_URL", dev.database_url)
    else:
        dev = None
    for key, value in shared.items():
        env.setdefault(key, value)
    if directory is not None:
        env.update(read_env_file(directory / "app.env"))
        path = [str(directory.resolve()), str(root or Path.cwd()), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    if need_services and "AGENTSCHED_REDIS_URL" not in env:
        raise ConfigError(
            "no running `agentsched dev` found (from "
            f"{', '.join(str(s) for s in starts)}) and AGENTSCHED_REDIS_URL is not set: "
            "start `agentsched dev`, or set AGENTSCHED_REDIS_URL and AGENTSCHED_DATABASE_URL "
            f"(not set, the library would use {DEFAULTS})"
        )
    return Target(env, dev)


def use_environment(app_dir: str | None) -> Target:
    """Make this process act for the app (environment and import path)."""
    target = app_environment(app_dir)
    os.environ.update(target.env)
    for entry in reversed([os.getcwd(), *target.env.get("PYTHONPATH", "").split(os.pathsep)]):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)
    return target


def run_async(work: Callable[[], Coroutine[Any, Any, int]], interrupted: int = 130) -> int:
    """Run a command's coroutine; Ctrl-C or SIGTERM end it with exit code `interrupted`."""
    return asyncio.run(until_signal(work(), interrupted))


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


# --- output --------------------------------------------------------------------------------
def to_json(value: Any) -> str:
    def default(item: Any) -> Any:
        if isinstance(item, dt.datetime):
            return item.isoformat()
        return str(item)

    return json.dumps(value, default=default)


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def when(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def json_arg(text: str, name: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--{name}: not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, kind):
        raise ConfigError(f"--{name}: must be a JSON {'array' if kind is list else 'object'}")
    return value


def app_of(args: argparse.Namespace) -> str | None:
    return getattr(args, "app_dir", None)
