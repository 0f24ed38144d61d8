"""The fast Redis connections: same bytes on the wire, same errors, stale sockets caught."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from agentsched.connections import (
    FastConnection,
    FastUnixConnection,
    connection_pool,
    redis_client,
)
from tests.conftest import REDIS_URL

ARGUMENTS: list[tuple[Any, ...]] = [
    ("SET", "key", "value"),
    ("EVALSHA", "abc", 2, b"k1", "k2", 0, -17, 2**70, "é✓", b"\x00\xff"),
    ("ZRANGEBYSCORE", "q", float("-inf"), float("inf"), 0.1, 1e300, 1.5e-7),
    ("SET", "k", memoryview(b"view")),
    ("CONFIG GET", "maxmemory"),  # a spaced name is split into two arguments
    (b"CLIENT SETNAME", "worker"),
    ("SET", "k", "x" * 100_000),
]


@pytest.mark.parametrize("args", ARGUMENTS)
def test_packs_the_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    assert b"".join(FastConnection().pack_command(*args)) == b"".join(
        Connection().pack_command(*args)
    )


def test_pipeline_packing_matches_redis_py() -> None:
    commands = [(args, {}) for args in ARGUMENTS]
    ours = FastConnection().pack_commands(args for args, _ in commands)
    theirs = Connection().pack_commands(args for args, _ in commands)
    assert b"".join(ours) == b"".join(bytes(chunk) for chunk in theirs)


@pytest.mark.parametrize("bad", [None, True, object()])
def test_bad_argument_raises_redis_pys_error(bad: Any) -> None:
    with pytest.raises(DataError):
        FastConnection().pack_command("SET", "k", bad)


def test_pool_keeps_the_urls_connection_kind() -> None:
    assert connection_pool("redis://127.0.0.1:6379/0").connection_class is FastConnection
    unix = connection_pool("unix:///tmp/redis.sock?db=0")
    assert unix.connection_class is FastUnixConnection
    assert issubclass(FastUnixConnection, UnixDomainSocketConnection)


async def test_round_trips_on_a_real_server(prefix: str) -> None:
    client = redis_client(REDIS_URL)
    try:
        values = ["plain", "é✓ unicode", 42, 2.5, b"\x00bytes\xff"]
        for i, value in enumerate(values):
            await client.set(f"{prefix}{i}", value)
        pipe = client.pipeline(transaction=True)
        for i in range(len(values)):
            pipe.get(f"{prefix}{i}")
        got = await pipe.execute()
        assert got == [b"plain", "é✓ unicode".encode(), b"42", b"2.5", b"\x00bytes\xff"]
        assert await client.execute_command("CONFIG GET", "port")
    finally:
        await client.delete(*[f"{prefix}{i}" for i in range(5)])
        await client.aclose()


async def test_a_connection_returned_with_unread_data_is_replaced(prefix: str) -> None:
    pool = connection_pool(REDIS_URL, max_connections=1)
    client = redis_client(REDIS_URL)
    try:
        await client.set(prefix + "k", "fresh")
        connection = await pool.get_connection()
        await connection.send_command("ECHO", "stale reply")  # never read
        await pool.release(connection)
        await asyncio.sleep(0.05)  # the reply reaches the socket's buffer
        again = await pool.get_connection()
        await again.send_command("GET", prefix + "k")
        assert await again.read_response() == b"fresh"
        await pool.release(again)
    finally:
        await client.delete(prefix + "k")
        await client.aclose()
        await pool.disconnect()


async def test_a_connection_the_server_closed_is_replaced(prefix: str) -> None:
    client = redis_client(REDIS_URL)
    admin = redis_client(REDIS_URL)
    name = prefix.replace(":", "-") + "killed"
    try:
        await client.client_setname(name)
        assert await client.ping()
        for entry in await admin.client_list():
            if entry.get("name") == name:
                await admin.client_kill_filter(_id=entry["id"])
        await asyncio.sleep(0.05)  # the EOF reaches the idle pooled connection
        assert await client.ping()  # reconnected, not "Connection closed by server"
    finally:
        await client.aclose()
        await admin.aclose()
