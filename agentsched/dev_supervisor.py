"""The child processes of `agentsched dev`, and the policy that restarts them.

A child that exits while the platform runs is restarted after a back-off (0.5 s,
doubling, at most 10 s), with one line saying so. A child that exits `CRASH_LIMIT`
times within `CRASH_WINDOW` seconds is crash-looping: the platform stops and says
which child and its last line of output. Ctrl-C is the only other way to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

CRASH_LIMIT = 5
CRASH_WINDOW = 60.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0


def _die_with_parent() -> None:
    # Runs in the child before exec: if `agentsched dev` is killed outright, the kernel
    # sends the child SIGTERM, so no process outlives the platform.
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def describe_exit(code: int | None) -> str:
    """`exited with code 1`, or `was killed by SIGKILL` for a negative code."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@dataclass
class CrashPolicy:
    """Back-off and crash-loop detection of one child, from the times it exited."""

    limit: int = CRASH_LIMIT
    window: float = CRASH_WINDOW
    crashes: deque[float] = field(default_factory=deque)

    def record(self, now: float) -> float | None:
        """Count a crash at `now`: the back-off before the restart, or None to give up."""
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > self.window:
            self.crashes.popleft()
        if len(self.crashes) >= self.limit:
            return None
        return float(min(FIRST_BACKOFF * 2 ** (len(self.crashes) - 1), MAX_BACKOFF))


@dataclass
class Child:
    """One child process whose output is relayed line by line under `label`."""

    label: str
    argv: list[str]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    last_line: str = ""
    policy: CrashPolicy = field(default_factory=CrashPolicy)

    async def start(self, cwd: Path, width: int) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=cwd, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        self.pump = asyncio.create_task(self._relay(self.label.ljust(width)))

    async def _relay(self, prefix: str) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.strip():
                self.last_line = line.strip()
            print(f"{prefix} | {line}", flush=True)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)  # the child's whole session: no grandchild escapes

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        if self.pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.pump
        return code
