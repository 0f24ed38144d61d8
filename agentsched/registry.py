"""`@task` and the registry of task functions: the only names that can ever run.

A name reaches the registry only through the decorator, in a module the process chose
to import (`AGENTSCHED_TASK_MODULES` or an app's own configuration). Nothing from REST,
YAML or Redis is ever imported as a module path.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from agentsched.errors import ConfigError, InvalidInput, UnknownFunction

F = TypeVar("F", bound=Callable[..., Any])

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}(\.[A-Za-z_][A-Za-z0-9_-]{0,127}){0,15}$")
_ATTR = "__agentsched_task__"


@dataclass(frozen=True, slots=True)
class TaskDef:
    """A registered task function and how it runs."""

    name: str
    func: Callable[..., Any]
    is_async: bool
    timeout: float | None = None
    max_retries: int = 0
    retry_backoff: float = 1.0
    description: str = ""
    parameters: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    signature: inspect.Signature | None = None
    # Call shapes (number of args, keyword names) known to bind: binding depends on
    # nothing else, and a batch of a thousand jobs of one shape binds once.
    bound_shapes: set[tuple[int, frozenset[str]]] = field(
        default_factory=set, compare=False, repr=False
    )

    @property
    def max_tries(self) -> int:
        return self.max_retries + 1

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """`InvalidInput` naming the parameter when `args` / `kwargs` do not bind to the
        function's signature (a misspelt, missing or extra argument); a function taking
        ``*args`` / ``**kwargs`` accepts any extra. Values are not checked (JSON has no
        Python types) and never appear in the message."""
        sig = self.signature
        if sig is None:
            return
        shape = (len(args), frozenset(kwargs))
        if shape in self.bound_shapes:
            return
        params = sig.parameters.values()
        call = f"{self.name}({', '.join(p.name for p in params)})"
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            named = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
            for key in kwargs:
                if key not in named:
                    raise InvalidInput(f"kwargs.{key}"[:200], f"{call} takes no argument {key!r}")
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            where = "kwargs" if "multiple values" in str(exc) else "args"
            raise InvalidInput(where, f"{call}: {exc}") from None
        if len(self.bound_shapes) < 64:
            self.bound_shapes.add(shape)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt `attempt + 1` (exponential, capped at 1 h)."""
        return float(min(self.retry_backoff * 2 ** max(attempt - 1, 0), 3600.0))


_REGISTRY: dict[str, TaskDef] = {}


def validate_name(name: str, field_name: str = "function") -> str:
    """A dotted task name of safe segments, no dunders; `InvalidInput` otherwise."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInput(field_name, "must be a dotted name of letters, digits, '_' and '-'")
    if any(part.startswith("__") for part in name.split(".")):
        raise InvalidInput(field_name, "dunder segments are not allowed")
    return name


def _parameters(func: Callable[..., Any]) -> tuple[dict[str, Any], ...]:
    params = []
    for p in inspect.signature(func).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = p.annotation
        params.append(
            {
                "name": p.name,
                "annotation": None
                if annotation is inspect.Parameter.empty
                else getattr(annotation, "__name__", str(annotation)),
                "required": p.default is inspect.Parameter.empty,
                "default": None if p.default is inspect.Parameter.empty else repr(p.default),
            }
        )
    return tuple(params)


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):  # some builtins have none: accept any arguments
        return None


def _register(
    func: F, name: str | None, timeout: float | None, max_retries: int, retry_backoff: float
) -> F:
    task_name = name or f"{func.__module__}.{func.__qualname__}"
    try:
        validate_name(task_name, "name")
    except InvalidInput as exc:
        raise ConfigError(f"@task {task_name}: {exc.message}; pass name=...") from None
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"@task {task_name}: timeout must be > 0")
    if max_retries < 0:
        raise ConfigError(f"@task {task_name}: max_retries must be >= 0")
    existing = _REGISTRY.get(task_name)
    if (
        existing is not None
        and existing.func is not func
        and (
            existing.func.__module__ != func.__module__
            or existing.func.__qualname__ != func.__qualname__
        )
    ):
        raise ConfigError(f"@task {task_name}: name already registered by another function")
    definition = TaskDef(
        name=task_name,
        func=func,
        is_async=inspect.iscoroutinefunction(func),
        timeout=timeout,
        max_retries=max_retries,
        retry_backoff=retry_backoff,
        description=inspect.getdoc(func) or "",
        parameters=_parameters(func),
        signature=_signature(func),
    )
    _REGISTRY[task_name] = definition
    setattr(func, _ATTR, definition)
    return func


@overload
def task(func: F, /) -> F: ...


@overload
def task(
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_retries: int = 0,
    retry_backoff: float = 1.0,
) -> Callable[[F], F]: ...


def task(
    func: Any = None,
    /,
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_retries: int = 0,
    retry_backoff: float = 1.0,
) -> Any:
    """Register a task function (`async def`, or a plain `def` that runs in a thread).

    Use bare (`@task`) or with options (`@task(name="email.send", timeout=120,
    max_retries=3, retry_backoff=2.0)`). The name defaults to `module.function`;
    `timeout` defaults to `AGENTSCHED_JOB_TIMEOUT`; retry n waits
    `retry_backoff * 2 ** (n - 1)` seconds. The function is returned unchanged.
    """
    if func is not None:
        return _register(func, None, None, 0, 1.0)

    def decorator(f: F) -> F:
        return _register(f, name, timeout, max_retries, retry_backoff)

    return decorator


def task_name(ref: str | Callable[..., Any]) -> str:
    """The registered name for a name or a decorated function."""
    if isinstance(ref, str):
        return ref
    definition = getattr(ref, _ATTR, None)
    if definition is None:
        raise UnknownFunction(getattr(ref, "__qualname__", repr(ref)))
    return str(definition.name)


def get_task(ref: str | Callable[..., Any], field_name: str = "function") -> TaskDef:
    """The `TaskDef` for a name or decorated function; `UnknownFunction` if not registered."""
    name = task_name(ref)
    definition = _REGISTRY.get(name) if isinstance(name, str) else None
    if definition is None:
        raise UnknownFunction(str(name), field_name)
    return definition


def registered() -> dict[str, TaskDef]:
    """A snapshot of every registered task, by name."""
    return dict(_REGISTRY)


def import_task_modules(modules: Iterable[str]) -> list[str]:
    """Import the operator-configured task modules; `ConfigError` naming a failing one."""
    imported = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigError(
                f"AGENTSCHED_TASK_MODULES: cannot import {module!r}: {type(exc).__name__}: {exc}"
            ) from None
        imported.append(module)
    return imported
