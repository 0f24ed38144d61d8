"""Env files, and the state file by which the CLI finds a running `agentsched dev`.

`agentsched dev` writes its Redis and database URLs, its pid, the repository root and
the apps' URLs twice: to `<state dir>/dev.env` (default `.agentsched/dev.env` in the
repository) and to `<runtime dir>/agentsched/dev-<pid>.env`, the per-user runtime
directory (`$XDG_RUNTIME_DIR`, else `/tmp/agentsched-<uid>`). Every other command
finds it from any directory: first through the `--app-dir`'s or the working
directory's repository, then through the runtime directory. A state file whose pid is
gone is ignored. Imports nothing heavy: `agentsched --help` loads this module.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agentsched.errors import ConfigError

SHARED_ENV = Path("config/agentsched.env")
STATE_NAME = "dev.env"


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines of an env file (`#` comments, blank lines ignored); `ConfigError`."""
    values: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"{path}:{number}: expected KEY=value, got {line[:60]!r}")
        values[key.strip()] = value.strip()
    return values


def runtime_dir() -> Path:
    """The per-user directory of running platforms' state files."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(
        tempfile.gettempdir(), f"agentsched-{os.getuid()}"
    )
    return Path(base) / "agentsched"


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, but another user's
    return True


@dataclass(frozen=True, slots=True)
class DevState:
    """A running `agentsched dev`, as its state file describes it."""

    path: Path
    values: dict[str, str]

    @property
    def pid(self) -> int:
        try:
            return int(self.values.get("AGENTSCHED_DEV_PID", "0"))
        except ValueError:
            return 0

    @property
    def redis_url(self) -> str:
        return self.values.get("AGENTSCHED_REDIS_URL", "")

    @property
    def database_url(self) -> str:
        return self.values.get("AGENTSCHED_DATABASE_URL", "")

    @property
    def root(self) -> Path | None:
        root = self.values.get("AGENTSCHED_DEV_ROOT")
        return Path(root) if root else None

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def still_current(self) -> bool:
        """True while the platform runs and its state file still says the same."""
        try:
            return self.alive() and read_env_file(self.path) == self.values
        except ConfigError:
            return False


def write_state(paths: list[Path], values: dict[str, str]) -> None:
    """Write the state file to each path (atomically: readers never see half a file)."""
    text = "".join(f"{k}={v}\n" for k, v in values.items())
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)


def remove_state(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _load(path: Path) -> DevState | None:
    if not path.is_file():
        return None
    try:
        state = DevState(path, read_env_file(path))
    except ConfigError:
        return None
    return state if state.alive() and state.redis_url else None


def repo_root(start: Path) -> Path | None:
    """The nearest directory at or above `start` that holds `apps/` or `config/agentsched.env`."""
    for directory in [start.resolve(), *start.resolve().parents]:
        if (directory / SHARED_ENV).is_file() or (directory / "apps").is_dir():
            return directory
    return None


def find_dev(*starts: Path) -> DevState | None:
    """The running platform of the first repository above `starts`, else the newest one
    of this user's runtime directory; None when no platform runs."""
    for start in starts:
        root = repo_root(start)
        if root is not None and (found := _load(root / ".agentsched" / STATE_NAME)):
            return found
    stamped = []
    for path in runtime_dir().glob("dev-*.env"):
        with contextlib.suppress(OSError):  # a platform may remove its file meanwhile
            stamped.append((path.stat().st_mtime, path))
    for _, path in sorted(stamped, reverse=True):
        if found := _load(path):
            return found
    return None
