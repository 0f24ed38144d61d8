"""The script line: the same replies and errors as redis-py, in order under concurrency,
and redis-py's road whenever the line cannot serve a call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from agentsched.connections import connection_pool, redis_client
from agentsched.script_line import ScriptLine
from tests.conftest import REDIS_URL
from tests.redis_servers import PrivateRedis

ECHO = "return {ARGV[1], tonumber(ARGV[2]), {KEYS[1], false}, redis.call('GET', KEYS[1])}"


class Slow:
    """redis-py's road, counting the calls that took it."""

    def __init__(self, client: Redis) -> None:
        self.client, self.calls = client, 0

    async def __call__(self, *command: Any) -> Any:
        self.calls += 1
        return await self.client.execute_command(*command)


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    c = redis_client(REDIS_URL)
    yield c
    await c.aclose()


def line_of(client: Redis) -> ScriptLine:
    line = client.connection_pool.script_line()  # type: ignore[attr-defined]
    assert line is not None
    return line


async def test_replies_are_redis_pys(client: Redis, prefix: str) -> None:
    sha = await client.script_load(ECHO)
    await client.set(prefix + "k", b"\x00\xffv")
    command = ("EVALSHA", sha, 1, prefix + "k", "é✓", 42)
    slow = Slow(client)
    assert await line_of(client).call(slow, *command) == await client.execute_command(*command)
    assert slow.calls == 0


async def test_concurrent_calls_get_their_own_replies_even_when_one_is_cancelled(
    client: Redis,
) -> None:
    sha = await client.script_load("return ARGV[1]")
    line, slow = line_of(client), Slow(client)
    calls = [asyncio.create_task(line.call(slow, "EVALSHA", sha, 0, str(i))) for i in range(300)]
    calls[7].cancel()  # its reply arrives anyway and must not go to the next caller
    replies = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(replies[7], asyncio.CancelledError)
    assert [r for i, r in enumerate(replies) if i != 7] == [
        str(i).encode() for i in range(300) if i != 7
    ]
    assert await line.call(slow, "EVALSHA", sha, 0, "after") == b"after"
    assert slow.calls == 0


async def test_errors_are_redis_pys(client: Redis) -> None:
    line, slow = line_of(client), Slow(client)
    with pytest.raises(NoScriptError):
        await line.call(slow, "EVALSHA", "0" * 40, 0)
    with pytest.raises(ResponseError, match="boom"):
        await line.call(slow, "EVAL", "return redis.error_reply('boom')", 0)
    assert slow.calls == 0


async def test_arguments_hiredis_cannot_pack_take_redis_pys_road(client: Redis) -> None:
    slow = Slow(client)
    with pytest.raises(Exception, match="Invalid input of type: 'NoneType'"):
        await line_of(client).call(slow, "EVAL", "return 1", 0, None)
    assert slow.calls == 1


async def test_a_killed_connection_is_opened_again(client: Redis) -> None:
    line, slow = line_of(client), Slow(client)
    own_id = await line.call(slow, "CLIENT", "ID")
    await client.client_kill_filter(_id=own_id)
    replies = [await line.call(slow, "EVAL", "return 7", 0) for _ in range(3)]
    assert replies == [7, 7, 7]
    # The call that met the dead connection went redis-py's way; the line is back after.
    await asyncio.sleep(1.1)
    assert await line.call(slow, "CLIENT", "ID") != own_id


async def test_redis_down_goes_redis_pys_way_without_reconnecting_each_call(
    tmp_path: Path,
) -> None:
    server = PrivateRedis(tmp_path / "redis").start()
    server.client().config_set("requirepass", "sesame")
    url = f"redis://:sesame@127.0.0.1:{server.port}/3"
    client = redis_client(url, retry_seconds=0)
    try:
        line, slow = line_of(client), Slow(client)
        await line.call(slow, "SET", "where", "db3")  # AUTH and SELECT on the line too
        assert slow.calls == 0
        assert redis.Redis(port=server.port, password="sesame", db=3).get("where") == b"db3"
        server.kill()
        for _ in range(3):
            with pytest.raises(Exception, match=r"(?i)connect"):
                await line.call(slow, "GET", "where")
        assert slow.calls == 3
        assert line._protocol is None or line._protocol.lost
    finally:
        server.kill()
        await client.aclose()


async def test_the_line_closes_with_its_pool() -> None:
    pool = connection_pool(REDIS_URL)
    line = pool.script_line()  # type: ignore[attr-defined]
    assert line is not None
    client = Redis.from_pool(pool)
    await line.call(client.execute_command, "PING")
    protocol = line._protocol
    await client.aclose()
    assert protocol is not None and protocol.transport is not None
    assert protocol.transport.is_closing()
    assert pool._line is None  # type: ignore[attr-defined]


def test_only_plain_connections_have_a_line() -> None:
    assert connection_pool(REDIS_URL).script_line() is not None  # type: ignore[attr-defined]
    assert connection_pool(REDIS_URL, max_connections=4).script_line() is not None  # type: ignore[attr-defined]
    tls = connection_pool(REDIS_URL.replace("redis://", "rediss://"))
    assert tls.script_line() is None  # type: ignore[attr-defined]
    decoded = connection_pool(REDIS_URL, decode_responses=True)
    assert decoded.script_line() is None  # type: ignore[attr-defined]
    sentinel = connection_pool("redis+sentinel://127.0.0.1:1/mymaster/0")
    assert getattr(sentinel, "script_line", None) is None
