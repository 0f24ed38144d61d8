"""Shared fixtures: real Redis (own DB and key prefix per test) and real PostgreSQL.

Isolation: every test gets a fresh Redis key prefix and a fresh app name, so rows and
keys of different tests never meet; the PostgreSQL database is private to the session.
Nothing is ever flushed: a test deletes only the keys under its own prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from arq.worker import Worker, create_worker

from agentsched.settings import Settings, load_settings

REDIS_URL = os.environ.get("AGENTSCHED_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
PG_ADMIN_DSN = os.environ.get(
    "AGENTSCHED_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_DB = f"agentsched_test_{os.getpid()}"


def _pg_url() -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+asyncpg://") + "/" + PG_DB


SCREENSHOTS_SINCE = pytest.StashKey[float]()


def screenshot_folder() -> Path:
    """Where the browser tests save screenshots: `AGENTSCHED_SCREENSHOTS`, else one fixed
    folder in the temp dir. Not pytest's basetemp, which keeps only the last three runs
    of everyone on the machine and differs between xdist workers and their controller."""
    chosen = os.environ.get("AGENTSCHED_SCREENSHOTS")
    return Path(chosen) if chosen else Path(tempfile.gettempdir()) / "agentsched-screenshots"


@pytest.fixture(scope="session")
def screenshots() -> Path:
    folder = screenshot_folder()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[SCREENSHOTS_SINCE] = time.time()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Name the screenshot folder after a run that saved some. Here, in the controller:
    what an xdist worker prints never reaches the terminal."""
    if hasattr(config, "workerinput"):
        return
    folder, since = screenshot_folder(), config.stash.get(SCREENSHOTS_SINCE, 0.0)
    if folder.is_dir() and any(shot.stat().st_mtime >= since for shot in folder.glob("*.png")):
        terminalreporter.write_line(f"dashboard screenshots: {folder}")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)'))
    asyncio.run(admin(f'CREATE DATABASE "{PG_DB}"'))
    yield _pg_url()
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)'))


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """State files of `agentsched dev` runs go to a directory of this test process only,
    so no test finds a platform another test (or another person's run) started."""
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("runtime"))
    yield
    if old is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = old


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:10]}:"


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete a test's keys, and arq's job keys of the executions in its queues."""
    client = aioredis.Redis.from_url(url)
    try:
        batch = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        for key in [k for k in batch if k.startswith((prefix + "queue:").encode())]:
            for job_id in await client.zrange(key, 0, -1):
                ident = job_id.decode()
                kinds = ("job", "retry", "in-progress")
                batch += [f"arq:{kind}:{ident}".encode() for kind in kinds]
        for i in range(0, len(batch), 500):
            await client.delete(*batch[i : i + 500])
    finally:
        await client.aclose()


@pytest.fixture(params=["postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/agentsched.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def settings(prefix: str, db_url: str) -> AsyncIterator[Settings]:
    s = load_settings(
        redis_url=REDIS_URL,
        database_url=db_url,
        app=f"app-{uuid.uuid4().hex[:8]}",
        redis_prefix=prefix,
        task_modules=["tests.sample_tasks"],
        lease_seconds=1.5,
        keep_result=300,
    )
    yield s
    await delete_prefix(REDIS_URL, prefix)


def subprocess_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a real `arq agentsched.WorkerSettings` subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSCHED_")}
    env.update(
        AGENTSCHED_REDIS_URL=settings.redis_url,
        AGENTSCHED_DATABASE_URL=settings.database_url,
        AGENTSCHED_APP=settings.app,
        AGENTSCHED_REDIS_PREFIX=settings.redis_prefix,
        AGENTSCHED_TASK_MODULES=",".join(settings.task_modules),
        AGENTSCHED_LEASE_SECONDS=str(settings.lease_seconds),
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
    )
    env.update(extra)
    return env


@pytest.fixture
async def run_worker(settings: Settings) -> AsyncIterator[Callable[..., Any]]:
    """Start in-process arq workers built from agentsched's settings; stopped at teardown."""
    from agentsched.worker import build_worker_settings

    started: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> Worker:
        s = settings.model_copy(update=overrides) if overrides else settings
        worker = create_worker(build_worker_settings(s), handle_signals=False)
        task = asyncio.create_task(worker.async_run())
        started.append((worker, task))
        await asyncio.sleep(0.05)
        return worker

    yield start
    for worker, task in started:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await close_worker(worker)


async def close_worker(worker: Worker) -> None:
    """arq's `close()`: it cancels the jobs still running and gathers them, so a job
    cancelled while it awaited its own finish raises CancelledError out of it before
    the shutdown hook ran. The jobs are done then: the next call closes the rest."""
    for _ in range(3):
        try:
            await worker.close()
            return
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # the test itself is being cancelled
    await worker.close()
