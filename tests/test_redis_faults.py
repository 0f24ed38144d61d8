"""Faults of Redis itself, on private redis-servers, with real worker subprocesses.

Each test runs ledger jobs (a start log and a counted side effect), faults Redis, and
checks after the drain: nothing lost, no effect committed twice, every SQL row
terminal, no attempt above max_tries, and the same worker processes still running.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.exceptions import OutOfMemoryError

from agentsched import TaskQueue, TaskStatus
from agentsched.errors import ServiceUnavailable
from agentsched.execution import Execution
from agentsched.settings import Settings
from tests.conftest import subprocess_env
from tests.fault_tasks import commits
from tests.redis_servers import Blackhole, PrivateRedis, SentinelGroup, wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ARQ = [sys.executable, "-m", "arq", "agentsched.WorkerSettings"]
RECONCILE = 2.0


class Workers:
    """Worker subprocesses, each logging to its own file."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, redis_url: str | None = None, **env: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"worker-{len(self.procs)}.log").open("wb")
        extra = {
            "AGENTSCHED_RECONCILE_SECONDS": str(RECONCILE),
            "AGENTSCHED_MAX_JOBS": "4",
            **env,
        }
        if redis_url:
            extra["AGENTSCHED_REDIS_URL"] = redis_url
        with log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                ARQ, cwd=ROOT, env=subprocess_env(self.settings, **extra), stdout=log, stderr=log
            )
        self.procs.append(proc)
        return proc

    def output(self, i: int) -> str:
        return (self.logs / f"worker-{i}.log").read_text()

    def all_alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
def fault_settings(settings: Settings, private_redis: PrivateRedis) -> Settings:
    return settings.model_copy(
        update={
            "redis_url": private_redis.url,
            "task_modules": ["tests.sample_tasks", "tests.fault_tasks"],
            "reconcile_seconds": RECONCILE,
            "redis_retry_seconds": 2.0,
        }
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger"
    path.mkdir()
    return path


@pytest.fixture
def workers(fault_settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(fault_settings, tmp_path)
    yield group
    group.stop()


@pytest.fixture
async def queue(fault_settings: Settings) -> AsyncIterator[TaskQueue]:
    async with TaskQueue(fault_settings) as q:
        yield q


async def enqueue_ledger(
    queue: TaskQueue, ledger: Path, count: int, seconds: float
) -> dict[str, int]:
    ids = {}
    for n in range(count):
        execution = await queue.enqueue(
            "faults.ledger", kwargs={"n": n, "ledger": str(ledger), "seconds": seconds}
        )
        ids[execution.id] = n
    return ids


async def sql_rows(queue: TaskQueue, ids: dict[str, int]) -> dict[str, Execution | None]:
    return {i: await queue.runtime.executions.get(queue.app, i) for i in ids}


async def wait_rows(
    queue: TaskQueue,
    ids: dict[str, int],
    check: Callable[[dict[str, Execution | None]], bool],
    timeout: float,
    what: str,
) -> dict[str, Execution | None]:
    deadline = time.monotonic() + timeout
    rows = await sql_rows(queue, ids)
    while time.monotonic() < deadline:
        if check(rows):
            return rows
        await asyncio.sleep(0.2)
        rows = await sql_rows(queue, ids)
    statuses = sorted(str(r.status.value if r else None) for r in rows.values())
    raise AssertionError(f"timed out waiting for {what}; SQL statuses: {statuses}")


def count(rows: dict[str, Execution | None], status: TaskStatus) -> int:
    return sum(1 for r in rows.values() if r is not None and r.status is status)


async def drained(queue: TaskQueue, ids: dict[str, int], ledger: Path, timeout: float) -> None:
    """Every execution succeeded exactly once, and its SQL row says so."""
    rows = await wait_rows(
        queue,
        ids,
        lambda rows: all(r is not None and r.status.is_terminal for r in rows.values()),
        timeout,
        "every SQL row terminal",
    )
    for row in rows.values():
        assert row is not None
        assert row.status is TaskStatus.SUCCESS, (row.id, row.status, row.error, row.max_tries)
        assert row.attempt <= row.max_tries, (row.id, row.attempt, row.max_tries)
    done = commits(ledger)
    assert sorted(done) == sorted(ids.values()), "lost executions"
    assert max(done.values()) == 1, f"effects committed twice: {done}"


async def test_workers_ride_out_a_stopped_redis_and_resume(
    private_redis: PrivateRedis, workers: Workers, queue: TaskQueue, ledger: Path
) -> None:
    private_redis.client().config_set("appendonly", "yes")
    private_redis.client().config_set("appendfsync", "always")
    wait_until(
        lambda: private_redis.client().info("persistence")["aof_rewrite_in_progress"] == 0,
        what="the first AOF rewrite",
    )
    pids = [workers.start().pid, workers.start().pid]
    ids = await enqueue_ledger(queue, ledger, 24, 0.4)
    await wait_rows(queue, ids, lambda r: count(r, TaskStatus.SUCCESS) >= 3, 30, "3 done")
    private_redis.stop()  # SIGTERM: the AOF keeps every acknowledged write
    await asyncio.sleep(6)  # the outage itself: longer than the lease
    assert workers.all_alive(), workers.output(0)
    private_redis.start()
    await drained(queue, ids, ledger, timeout=45)
    assert workers.all_alive() and [p.pid for p in workers.procs] == pids
    for i in range(2):
        out = workers.output(i)
        assert "Traceback" not in out, out
        assert out.count("Redis is unavailable") == 1, out
        assert out.count("Redis answers again") == 1, out


async def test_restart_without_persistence_is_healed_from_sql(
    private_redis: PrivateRedis, workers: Workers, queue: TaskQueue, ledger: Path
) -> None:
    pids = [workers.start().pid, workers.start().pid]
    ids = await enqueue_ledger(queue, ledger, 30, 1.0)
    await wait_rows(
        queue,
        ids,
        lambda r: count(r, TaskStatus.RUNNING) >= 4 and count(r, TaskStatus.QUEUED) >= 10,
        30,
        "jobs running and queued",
    )
    private_redis.shutdown_nosave()
    private_redis.start()  # empty: every job, status and lease is gone
    await drained(queue, ids, ledger, timeout=50)
    assert [p.pid for p in workers.procs if p.poll() is None] == pids


async def test_flushdb_and_deleted_job_keys_are_reconciled(
    private_redis: PrivateRedis, workers: Workers, fault_settings: Settings, ledger: Path
) -> None:
    durable = fault_settings.model_copy(update={"durable_enqueue": True})
    async with TaskQueue(durable) as queue:
        await _flush_and_heal(private_redis, workers, queue, ledger)


async def _flush_and_heal(
    private_redis: PrivateRedis, workers: Workers, queue: TaskQueue, ledger: Path
) -> None:
    ids = await enqueue_ledger(queue, ledger, 10, 0.0)  # durable: the rows are in SQL
    first = next(iter(ids))
    client = private_redis.client()
    client.delete(f"arq:job:{first}")
    client.zrem(queue.tracker.keys.queue, first)
    client.flushdb()
    workers.start()
    await drained(queue, ids, ledger, timeout=40)


async def test_durable_enqueue_survives_redis_dying_right_after(
    private_redis: PrivateRedis, workers: Workers, fault_settings: Settings, ledger: Path
) -> None:
    async with TaskQueue(fault_settings.model_copy(update={"durable_enqueue": True})) as queue:
        # No recorder runs yet: only the durable commit can have put these rows in SQL.
        ids = dict(
            zip(
                [
                    e.id
                    for e in await asyncio.gather(
                        *(
                            queue.enqueue(
                                "faults.ledger",
                                kwargs={"n": n, "ledger": str(ledger), "seconds": 0},
                            )
                            for n in range(8)
                        )
                    )
                ],
                range(8),
                strict=True,
            )
        )
        rows = await sql_rows(queue, ids)
        assert all(r is not None and r.status is TaskStatus.QUEUED for r in rows.values())
        private_redis.shutdown_nosave()
        private_redis.start()
        workers.start()
        await drained(queue, ids, ledger, timeout=40)


async def test_worker_dead_between_claim_and_start_frees_the_job_within_a_lease(
    workers: Workers, fault_settings: Settings, queue: TaskQueue, ledger: Path
) -> None:
    from agentsched.worker import build_worker_settings

    ids = await enqueue_ledger(queue, ledger, 1, 0.0)
    (job_id,) = ids
    # arq's own claim sequence on agentsched's pool, and then nothing: a worker that
    # died right after claiming.
    # The claim starts the job too (one script), so the dead worker held a lease.
    pool = build_worker_settings(fault_settings).redis_pool
    pool.rides.tracker, pool.rides.worker = queue.tracker, "dead:1:claimed"
    async with pool.pipeline(transaction=True) as pipe:
        await pipe.watch(f"arq:in-progress:{job_id}")
        assert not await pipe.exists(f"arq:in-progress:{job_id}")
        assert await pipe.zscore(queue.tracker.keys.queue, job_id)
        pipe.multi()
        pipe.psetex(f"arq:in-progress:{job_id}", 300_000, b"1")
        await pipe.execute()
    assert await queue.get_status(job_id) is TaskStatus.RUNNING
    await pool.aclose()
    await pool.connection_pool.disconnect()
    claimed = time.monotonic()
    assert await queue.tracker.redis.exists(f"arq:in-progress:{job_id}") == 1
    workers.start()
    await drained(queue, ids, ledger, timeout=30)
    # Within about one lease (1.5 s) plus start-up, not the 300 s claim arq asked for.
    assert time.monotonic() - claimed < 20


async def test_shutdown_interrupted_run_does_not_exceed_max_tries(
    workers: Workers, queue: TaskQueue, tmp_path: Path
) -> None:
    first = workers.start()
    marker = tmp_path / "pid"
    execution = await queue.enqueue("tests.sleep", args=[11], kwargs={"marker": str(marker)})
    wait_until(marker.exists, what="the job to start")
    first.terminate()  # arq waits 10 s for the job, then cancels it
    first.wait(timeout=30)
    workers.start()
    result = await queue.get_result(execution.id, timeout=40)
    assert result == "done"
    row = await queue.get_execution(execution.id)
    assert row.max_tries == 1 and row.attempt == 1


async def test_out_of_memory_redis_stalls_workers_without_killing_them(
    private_redis: PrivateRedis, workers: Workers, queue: TaskQueue, ledger: Path
) -> None:
    client = private_redis.client()
    pids = [workers.start().pid]
    ids = await enqueue_ledger(queue, ledger, 12, 0.3)
    await wait_rows(queue, ids, lambda r: count(r, TaskStatus.SUCCESS) >= 2, 30, "2 done")
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(used + 64 * 1024))
    filler = 0
    while True:  # fill it until writes are refused
        try:
            client.set(f"filler:{filler}", b"x" * 100_000)
            filler += 1
        except OutOfMemoryError:
            break
    await asyncio.sleep(3)
    assert workers.all_alive(), workers.output(0)
    if filler:
        client.delete(*[f"filler:{i}" for i in range(filler)])
    client.config_set("maxmemory", "0")
    await drained(queue, ids, ledger, timeout=40)
    assert [p.pid for p in workers.procs] == pids
    assert "Traceback" not in workers.output(0)


async def test_client_pause_is_ridden_out(
    private_redis: PrivateRedis, workers: Workers, queue: TaskQueue, ledger: Path
) -> None:
    pids = [workers.start().pid]
    ids = await enqueue_ledger(queue, ledger, 12, 0.2)
    await wait_rows(queue, ids, lambda r: count(r, TaskStatus.SUCCESS) >= 2, 30, "2 done")
    private_redis.client().execute_command("CLIENT", "PAUSE", "4000", "ALL")
    await asyncio.sleep(4.5)
    await drained(queue, ids, ledger, timeout=40)
    assert [p.pid for p in workers.procs] == pids


async def test_partitioned_worker_stops_its_job_and_another_runs_it_once(
    private_redis: PrivateRedis, workers: Workers, queue: TaskQueue, ledger: Path
) -> None:
    hole = await Blackhole(private_redis.port).start()
    try:
        cut_off = workers.start(redis_url=f"redis://127.0.0.1:{hole.port}/0")
        ids = await enqueue_ledger(queue, ledger, 1, 4.0)
        (job_id,) = ids
        await wait_rows(queue, ids, lambda r: count(r, TaskStatus.RUNNING) == 1, 30, "running")
        hole.cut()  # the worker hears nothing from Redis; Redis hears nothing from it
        other = workers.start()
        await drained(queue, ids, ledger, timeout=40)
        starts = (ledger / "starts").read_text().split()
        assert starts[1::2] == [str(cut_off.pid), str(other.pid)]
        row = await queue.get_execution(job_id)
        assert row.attempt == 2
        hole.heal()
        await asyncio.sleep(2 * 1.5)  # the cut-off worker's late writes would land now
        row = await queue.get_execution(job_id)
        assert row.status is TaskStatus.SUCCESS and row.attempt == 2
        assert cut_off.poll() is None and os.path.exists(f"/proc/{cut_off.pid}")
        assert "stopped on this worker" in workers.output(0)
    finally:
        await hole.close()


async def test_enqueue_and_api_answer_while_redis_is_down(
    private_redis: PrivateRedis, queue: TaskQueue
) -> None:
    from httpx import ASGITransport, AsyncClient

    from agentsched.api import create_app

    app = create_app(queue.settings)
    async with app.router.lifespan_context(app), AsyncClient(
        transport=ASGITransport(app=app), base_url="http://t"
    ) as http:
        private_redis.shutdown_nosave()
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as raised:
            await queue.enqueue("tests.sample_tasks.add", args=[1, 2])
        assert "Redis unreachable" in str(raised.value)
        assert time.monotonic() - started < 10  # redis_retry_seconds=2 plus backoff
        response = await http.post(
            "/api/scheduler/executions",
            json={"function": "tests.sample_tasks.add", "args": [1, 2]},
        )
        assert response.status_code == 503 and response.json()["type"] == "service_unavailable"
        private_redis.start()
        response = await http.post(
            "/api/scheduler/executions",
            json={"function": "tests.sample_tasks.add", "args": [1, 2]},
        )
        assert response.status_code in (200, 201, 202), response.text


async def test_sentinel_failover_mid_load_loses_nothing(
    settings: Settings, tmp_path: Path, ledger: Path
) -> None:
    group = SentinelGroup(tmp_path / "sentinel").start()
    try:
        failover = settings.model_copy(
            update={
                "redis_url": group.url,
                "task_modules": ["tests.sample_tasks", "tests.fault_tasks"],
                "reconcile_seconds": RECONCILE,
                "redis_retry_seconds": 10.0,
            }
        )
        workers = Workers(failover, tmp_path)
        try:
            pids = [workers.start().pid, workers.start().pid]
            async with TaskQueue(failover) as queue:
                ids = await enqueue_ledger(queue, ledger, 24, 0.3)
                await wait_rows(
                    queue, ids, lambda r: count(r, TaskStatus.SUCCESS) >= 3, 30, "3 done"
                )
                old = group.primary.port
                group.primary.kill()  # SIGKILL mid-load: the replica may miss writes
                wait_until(lambda: group.current_primary_port() != old, 30, "the failover")
                await drained(queue, ids, ledger, timeout=50)
            assert [p.pid for p in workers.procs if p.poll() is None] == pids
        finally:
            workers.stop()
    finally:
        group.stop()
