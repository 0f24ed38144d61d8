"""Real `arq agentsched.WorkerSettings` subprocesses: crashes, signals, start-up errors."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentsched import TaskQueue, TaskStatus
from agentsched.settings import Settings
from agentsched.worker import GC_YOUNG
from tests import gc_tasks  # noqa: F401  registers tests.gc_frozen and gc_young here too
from tests.conftest import subprocess_env
from tests.test_queue import wait_sql

ROOT = Path(__file__).resolve().parent.parent
ARQ = [sys.executable, "-m", "arq", "agentsched.WorkerSettings"]


def start_worker(settings: Settings, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ARQ,
        cwd=ROOT,
        env=subprocess_env(settings, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is None:
        return ""
    with proc.stdout:
        return proc.stdout.read().decode()


async def wait_for(path: Path, timeout: float = 60) -> str:  # generous: a busy machine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never written")


@pytest.fixture
def spawn(settings: Settings) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start real worker subprocesses; every one is stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        procs.append(start_worker(settings))
        return procs[-1]

    yield start
    for proc in procs:
        stop(proc)


@pytest.mark.slow
async def test_sigkilled_worker_job_is_retried_by_another(
    settings: Settings, tmp_path: Path, spawn: Callable[[], subprocess.Popen[bytes]]
) -> None:
    marker = tmp_path / "runs"
    first = spawn()
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.lost", kwargs={"marker": str(marker), "seconds": 60})
        pid = int((await wait_for(marker)).splitlines()[0])
        assert pid == first.pid
        assert await queue.get_status(execution.id) is TaskStatus.RUNNING
        os.kill(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        spawn()
        # lease 1.5 s: recovered within the lease plus a renewal period, not 60 s + 10 s
        result = await queue.get_result(execution.id, timeout=60)
        assert time.monotonic() - killed_at < 12
        assert result == "run 2"
        record = await queue.get_execution(execution.id)
        assert record.attempt == 2 and record.status is TaskStatus.SUCCESS
        await wait_sql(queue, execution.id, lambda r: r.status is TaskStatus.SUCCESS)


@pytest.mark.slow
async def test_sigkilled_worker_on_last_attempt_is_failed_worker_lost(
    settings: Settings, tmp_path: Path, spawn: Callable[[], subprocess.Popen[bytes]]
) -> None:
    marker = tmp_path / "pid"
    first = spawn()
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.sleep", args=[60], kwargs={"marker": str(marker)})
        await wait_for(marker)
        os.kill(first.pid, signal.SIGKILL)
        spawn()
        row = await wait_sql(
            queue, execution.id, lambda r: r.status is TaskStatus.FAILED, timeout=60
        )
        assert row.error_kind is not None and row.error_kind.value == "worker_lost"


@pytest.mark.slow
async def test_worker_runs_and_stops_on_sigterm(settings: Settings) -> None:
    proc = start_worker(settings)
    try:
        async with TaskQueue(settings) as queue:
            execution = await queue.enqueue("tests.sample_tasks.add", args=[4, 5])
            assert await queue.get_result(execution.id, timeout=60) == 9
    finally:
        output = stop(proc)
    assert proc.returncode == 0, output
    assert "Traceback" not in output


@pytest.mark.slow
async def test_cli_worker_freezes_what_start_up_built(
    settings: Settings, run_worker: Callable[..., Any]
) -> None:
    """A worker started by arq's CLI owns its process: what start-up built is frozen out
    of the collector's scans, and young collections come less often. A worker built
    inside another program leaves its GC alone."""
    modules = "tests.sample_tasks,tests.gc_tasks"
    young = gc.get_threshold()[0]
    proc = start_worker(settings, AGENTSCHED_TASK_MODULES=modules)
    try:
        async with TaskQueue(settings) as queue:
            execution = await queue.enqueue("tests.gc_frozen")
            assert await queue.get_result(execution.id, timeout=60) > 10_000
            execution = await queue.enqueue("tests.gc_young")
            assert await queue.get_result(execution.id, timeout=60) == GC_YOUNG
    finally:
        output = stop(proc)
    assert proc.returncode == 0, output
    await run_worker(task_modules=modules.split(","), app=settings.app + "-inproc")
    async with TaskQueue(settings.model_copy(update={"app": settings.app + "-inproc"})) as queue:
        execution = await queue.enqueue("tests.gc_frozen")
        assert await queue.get_result(execution.id, timeout=60) == 0
        execution = await queue.enqueue("tests.gc_young")
        assert await queue.get_result(execution.id, timeout=60) == young != GC_YOUNG


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"AGENTSCHED_REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"},
            "Redis unreachable at redis://:***@127.0.0.1:1/0",
        ),
        (
            {"AGENTSCHED_DATABASE_URL": "postgresql+asyncpg://u:s3cret@127.0.0.1:1/x"},
            "database unreachable at postgresql+asyncpg://u:***@127.0.0.1:1/x",
        ),
        pytest.param(  # the embedded default's driver
            {"AGENTSCHED_DATABASE_URL": "sqlite+aiosqlite:////nonexistent/dir/x.db"},
            "database unreachable at sqlite+aiosqlite:////nonexistent/dir/x.db",
            # Checked before connecting: after a failed open aiosqlite's thread posted to
            # the closed loop ("Exception in thread ..." and two tracebacks), 20-50% of starts.
        ),
        ({"AGENTSCHED_POLL_DELAY": "fast"}, "AGENTSCHED_POLL_DELAY"),
        ({"AGENTSCHED_APP": "Bad App!"}, "AGENTSCHED_APP"),
        ({"AGENTSCHED_TASK_MODULES": "no_such_module_here"}, "AGENTSCHED_TASK_MODULES"),
    ],
)
def test_startup_errors_are_one_line(
    settings: Settings, env: dict[str, str], expected: str
) -> None:
    proc = subprocess.run(
        ARQ, cwd=ROOT, env=subprocess_env(settings, **env), capture_output=True, timeout=60
    )
    output = (proc.stdout + proc.stderr).decode()
    assert proc.returncode != 0
    assert expected in output
    assert "Traceback" not in output
    assert "s3cret" not in output
    assert len(output.strip().splitlines()) == 1, output
