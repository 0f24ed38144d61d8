"""Worker subprocesses and what they cost: CPU time and memory read from /proc.

Every worker runs in a session of its own, so stopping it reaches the children that
dramatiq's and taskiq's CLIs fork, and `stop_all` (called on any exit of the bench,
Ctrl-C included) leaves nothing running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from bench.peers.driver import ROOT, Driver, Run, child_env

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[str, list[str]] | None:
    """(comm, the fields after it) of /proc/<pid>/stat; None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm, rest = raw[raw.index("(") + 1 :].rsplit(")", 1)
    return comm, rest.split()


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime, plus cutime + cstime: the CPU of children already reaped counts too."""
    total = 0
    for pid in pids:
        stat = _stat(pid)
        if stat is not None:
            fields = stat[1]  # fields[0] is field 3 (state) of proc(5)
            total += sum(int(v) for v in fields[11:15])
    return total / TICK


def _processes() -> dict[int, tuple[str, int]]:
    """pid -> (comm, ppid) of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            table[int(entry)] = (stat[0], int(stat[1][1]))
    return table


def tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid, (_, ppid) in _processes().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def postgres_pids() -> list[int]:
    """Every `postgres` process: the whole cluster, whoever's databases they serve."""
    return [pid for pid, (comm, _) in _processes().items() if comm == "postgres"]


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


class Worker:
    """One worker subprocess of one system; output to a log file, not the terminal."""

    running: set[Worker] = set()

    def __init__(self, driver: Driver, run: Run, log_dir: Path) -> None:
        self.driver = driver
        self.log = log_dir / f"{run.tag}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *driver.command()],
                cwd=ROOT,
                env=child_env() | driver.env(run),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        Worker.running.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to the CLI (it stops its own children), SIGKILL to the group if it hangs."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # children left behind, if any
        self.proc.wait()
        Worker.running.discard(self)

    @classmethod
    def stop_all(cls) -> None:
        for worker in list(cls.running):
            worker.stop(timeout=5)
