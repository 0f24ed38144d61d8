"""Reading a `tasks.yaml` file: safe YAML, strict validation, no database.

Only `yaml.SafeLoader` ever sees the text, so a `!!python/...` tag is an error and
nothing is constructed from it. Anchors and aliases are refused (they let a small
file expand into a huge document). Every problem is one `TasksFileError` naming the
file, the task and the field, with the line when the YAML nodes tell it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from agentsched.errors import InvalidInput, TasksFileError
from agentsched.registry import get_task
from agentsched.scheduling.rules import ScheduleSpec, parse_spec
from agentsched.settings import NAME_RE

MAX_FILE_BYTES = 1_048_576
MAX_TASKS = 10_000
_TOP_KEYS = ("app", "tasks")


@dataclass(frozen=True, slots=True)
class TasksFile:
    """A validated tasks file: the app it belongs to and its schedules."""

    path: str
    app: str
    tasks: list[ScheduleSpec]


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _at(message: str, line: int | None) -> str:
    return f"{message} (line {line})" if line else message


def _check_nodes(path: str, root: yaml.Node) -> None:
    """Refuse aliases and duplicate keys, walking the node tree once."""
    seen: set[int] = set()
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise TasksFileError(path, _at("YAML anchors and aliases are not allowed",
                                           _line(node)))  # fmt: skip
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in keys:
                        raise TasksFileError(path, _at(f"duplicate key {key.value[:50]!r}",
                                                       _line(key)))  # fmt: skip
                    keys.add(key.value)
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def _load(path: str) -> tuple[Any, yaml.Node | None]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise TasksFileError(path, f"cannot read the file: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise TasksFileError(path, f"file is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            _check_nodes(path, root)
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise TasksFileError(path, "file is not UTF-8 text") from None
    except RecursionError:
        raise TasksFileError(path, "YAML is nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = (exc.problem or exc.context or "invalid YAML").split("\n")[0][:200]
        if "tag:yaml.org,2002:python" in str(exc) or "!!python" in str(exc):
            problem = "python tags are not allowed (the file is read with yaml.safe_load)"
        raise TasksFileError(path, _at(problem, mark.line + 1 if mark else None)) from None
    except yaml.YAMLError as exc:
        raise TasksFileError(path, f"invalid YAML: {str(exc)[:200]}") from None
    return data, root


def _child(node: yaml.Node | None, key: str | int) -> yaml.Node | None:
    """The node under a mapping key or a sequence index, for line numbers."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return cast(yaml.Node, v)
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
        return cast(yaml.Node, node.value[key])
    return None


def _key_line(node: yaml.Node | None, key: str) -> int | None:
    if isinstance(node, yaml.MappingNode):
        for k, _v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return _line(k)
    return _line(node)


def _task(
    path: str, index: int, entry: Any, node: yaml.Node | None, check_functions: bool
) -> ScheduleSpec:
    label = f"#{index + 1}"
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        label = entry["name"][:100]
    if not isinstance(entry, dict):
        raise TasksFileError(path, _at("must be a mapping of task fields", _line(node)),
                             task=label)  # fmt: skip
    try:
        spec = parse_spec(entry)
        if check_functions:
            get_task(spec.function).check_arguments(spec.args, spec.kwargs)
    except InvalidInput as exc:
        field = exc.field.split(".")[0]
        line = _key_line(node, field)
        raise TasksFileError(path, _at(exc.message, line), task=label, field=exc.field) from None
    return spec


def parse_tasks_file(path: str | Path, *, check_functions: bool = False) -> TasksFile:
    """Read and validate a tasks file; `TasksFileError` on the first problem.

    With `check_functions`, every `function` must be a registered task (the task
    modules must already be imported). Nothing touches a database.
    """
    name = str(path)
    data, root = _load(name)
    if not isinstance(data, dict):
        raise TasksFileError(name, "must be a mapping with the keys 'app' and 'tasks'")
    for key in data:
        if key not in _TOP_KEYS:
            raise TasksFileError(name, _at("unknown key", _key_line(root, str(key))),
                                 field=str(key)[:50])  # fmt: skip
    app = data.get("app")
    if not isinstance(app, str) or not NAME_RE.match(app):
        raise TasksFileError(name, _at("must name the app, matching [a-z0-9][a-z0-9._-]*",
                                       _key_line(root, "app")), field="app")  # fmt: skip
    entries = data.get("tasks") or []
    if not isinstance(entries, list):
        raise TasksFileError(name, _at("must be a list of tasks", _key_line(root, "tasks")),
                             field="tasks")  # fmt: skip
    if len(entries) > MAX_TASKS:
        raise TasksFileError(name, f"more than {MAX_TASKS} tasks", field="tasks")
    tasks_node = _child(root, "tasks")
    specs: list[ScheduleSpec] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        node = _child(tasks_node, index)
        spec = _task(name, index, entry, node, check_functions)
        if spec.name in names:
            raise TasksFileError(name, _at("duplicate task name", _key_line(node, "name")),
                                 task=spec.name, field="name")  # fmt: skip
        names.add(spec.name)
        specs.append(spec)
    return TasksFile(path=name, app=app, tasks=specs)


def check_app(tasks_file: TasksFile, expected: str, source: str) -> None:
    """`TasksFileError` unless the file's `app:` is `expected`, the app `source` names.

    `agentsched validate` and a starting worker both call it, so both say the same line.
    """
    if tasks_file.app == expected:
        return
    line = ""
    with contextlib.suppress(OSError):
        lines = Path(tasks_file.path).read_text().splitlines()
        found = next((i for i, text in enumerate(lines, 1) if text.startswith("app:")), None)
        line = f" (line {found})" if found else ""
    message = f"is {tasks_file.app!r} but {source} says {expected!r}{line}"
    raise TasksFileError(tasks_file.path, message, field="app")
