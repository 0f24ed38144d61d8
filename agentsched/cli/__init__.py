"""The `agentsched` command: dev platform, worker, validate, and the commands that act on
a running platform (env, enqueue, show, cancel, retry, run-again, executions, tasks, run,
enable, disable, workers, dead-letters, events tail).

Commands that talk to Redis and the database find a running `agentsched dev` from any
directory (`agentsched/dev_state.py`), or use the `AGENTSCHED_*` environment with
defaults from the repository's `config/agentsched.env`; with neither they stop at once
with one line. `--app-dir apps/<app>` acts for that app: its `app.env` is loaded and
its directory goes on the import path. A user's mistake prints one line
(`agentsched: ...`) and a non-zero exit code, never a traceback.

Modules: `parser.py` (argparse only, so `--help` imports nothing heavy), `context.py`
(environment, output, signals), and one module per group of commands, imported only
when one of its commands runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from agentsched.cli.parser import build_parser
from agentsched.errors import AgentschedError

__all__ = ["build_parser", "main"]


def fail(message: str, code: int = 1) -> int:
    print(f"agentsched: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `agentsched` script; returns the exit code."""
    args = build_parser().parse_args(argv)
    module, _, name = args.handler.partition(":")
    try:
        handler: Callable[..., int] = getattr(import_module(f"agentsched.cli.{module}"), name)
        return handler(args)
    except AgentschedError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        return fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
