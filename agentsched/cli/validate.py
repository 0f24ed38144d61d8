"""`agentsched validate`: check tasks files with each app's own task modules, no services.

The app a file names must be the app that would load it: `app.env` beside the file, or
else `AGENTSCHED_APP` when set; a worker checks the same and says the same line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from agentsched.dev_state import read_env_file
from agentsched.errors import AgentschedError, ConfigError, TasksFileError
from agentsched.registry import import_task_modules, registered


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
    from agentsched.scheduling.tasks_file import check_app, parse_tasks_file

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
    if app_env.get("AGENTSCHED_APP"):
        check_app(parsed, app_env["AGENTSCHED_APP"], str(env_file))
    elif os.environ.get("AGENTSCHED_APP"):
        check_app(parsed, os.environ["AGENTSCHED_APP"], "AGENTSCHED_APP")
    tasks = registered()
    for spec in parsed.tasks:  # registered, but maybe by another app's modules
        owner = tasks[spec.function].func.__module__
        if not any(owner == m or owner.startswith(m + ".") for m in modules):
            where = _line_of(path, "function", spec.name)
            message = f"{spec.function!r} is a task of {owner}, not of {', '.join(modules)}{where}"
            raise TasksFileError(str(path), message, task=spec.name, field="function")
    return len(parsed.tasks)


def validate(args: argparse.Namespace) -> int:
    modules = [m.strip() for m in args.modules.split(",") if m.strip()] if args.modules else None
    failed = 0
    for file in args.files:
        try:
            count = validate_file(Path(file), modules)
        except AgentschedError as exc:
            failed += 1
            print(f"agentsched: {exc}", file=sys.stderr)
            continue
        print(f"ok: {file} ({count} task{'s' if count != 1 else ''})")
    return 1 if failed else 0
