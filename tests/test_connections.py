"""The fast Redis connections: same bytes on the wire, same errors, stale sockets caught."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
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
    ("CONFIG\tGET", "maxmemory"),  # any whitespace
    ("", "PING"),  # an empty name is dropped
    ("SET", "k", memoryview(b"abcdef")[::2]),  # not contiguous
    ("SET", "k", "x" * 100_000),
]


def packed(connection: Any, args: tuple[Any, ...]) -> bytes:
    return b"".join(bytes(chunk) for chunk in connection.pack_command(*args))


@pytest.mark.parametrize("args", ARGUMENTS)
def test_packs_the_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    assert packed(FastConnection(), args) == packed(Connection(), args)


@pytest.mark.parametrize(
    ("options", "value"),
    [
        ({"encoding": "latin-1"}, "café"),
        ({"encoding_errors": "surrogateescape"}, "\udcff"),
        ({"encoding_errors": "replace"}, "a\udcffb"),
    ],
)
def test_other_encodings_pack_as_redis_py_does(options: dict[str, str], value: str) -> None:
    args = ("SET", "k", value)
    assert packed(FastConnection(**options), args) == packed(Connection(**options), args)


def test_large_values_keep_redis_pys_uncopied_chunks() -> None:
    value = b"x" * 1_000_000
    chunks = FastConnection().pack_command("SET", "k", value)
    assert any(chunk is value for chunk in chunks)


def test_pipeline_packing_matches_redis_py() -> None:
    commands = [(args, {}) for args in ARGUMENTS]
    ours = FastConnection().pack_commands(args for args, _ in commands)
    theirs = Connection().pack_commands(args for args, _ in commands)
    assert b"".join(bytes(c) for c in ours) == b"".join(bytes(c) for c in theirs)


@pytest.mark.parametrize("bad", [None, True, object(), "\udcff"])
def test_bad_argument_raises_redis_pys_error(bad: Any) -> None:
    expected = UnicodeEncodeError if isinstance(bad, str) else DataError
    with pytest.raises(expected):
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


async def test_a_connection_reset_by_the_peer_is_replaced() -> None:
    # A reset (RST) leaves the stream with an error but not at EOF.
    host, port = REDIS_URL.split("//")[1].split("/")[0].split(":")
    downstream: list[asyncio.StreamWriter] = []
    upstream: list[asyncio.StreamWriter] = []
    handlers: list[asyncio.Task[Any]] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        downstream.append(writer)
        upstream.append(up_writer)
        await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    proxy_port = server.sockets[0].getsockname()[1]
    client = redis_client(f"redis://127.0.0.1:{proxy_port}/9")
    try:
        assert await client.ping()
        for writer in downstream:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        await asyncio.sleep(0.1)
        assert await client.ping()  # stock redis-py reconnects here too
    finally:
        await client.aclose()
        server.close()
        for writer in downstream + upstream:
            writer.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def test_a_bounded_pool_makes_callers_wait_instead_of_opening_more(prefix: str) -> None:
    """AGENTSCHED_REDIS_MAX_CONNECTIONS: 20 blocking calls share 8 connections."""
    from agentsched.connections import redis_client

    client = redis_client(REDIS_URL, max_connections=8)
    try:
        pool: Any = client.connection_pool
        most = 0

        async def blocked(name: str) -> None:
            nonlocal most
            call = asyncio.ensure_future(client.blpop([name], timeout=0.2))
            await asyncio.sleep(0.05)
            most = max(most, len(pool._in_use_connections))
            await call

        started = asyncio.get_running_loop().time()
        await asyncio.gather(*(blocked(f"{prefix}nothing:{i}") for i in range(20)))
        assert most <= 8
        assert len(pool._available_connections) <= 8
        # 20 calls of 0.2 s through 8 connections: three rounds, not one.
        assert asyncio.get_running_loop().time() - started >= 0.5
    finally:
        await client.aclose()


def test_the_runtime_and_the_worker_bound_their_pools() -> None:
    from agentsched.settings import load_settings
    from agentsched.worker import build_worker_settings

    settings = load_settings(
        redis_url=REDIS_URL, task_modules=["tests.sample_tasks"], redis_max_connections=12
    )
    pool = build_worker_settings(settings).redis_pool.connection_pool
    assert pool.max_connections == 12


async def test_a_bounded_pool_wakes_every_waiter_and_then_takes_the_short_path() -> None:
    """One connection, 30 callers of 10 commands each: all are served in turn (a release
    with a waiter wakes it), and once nobody waits a command skips redis-py's Condition."""
    from agentsched.connections import BoundedPool, redis_client

    client = redis_client(REDIS_URL, max_connections=1)
    try:
        pool: Any = client.connection_pool
        assert isinstance(pool, BoundedPool)
        async with asyncio.timeout(30):
            replies = await asyncio.gather(
                *(client.echo(f"{i}:{j}") for i in range(30) for j in range(10))
            )
        assert replies == [f"{i}:{j}".encode() for i in range(30) for j in range(10)]
        assert pool._waiting == 0
        assert len(pool._available_connections) == 1 and not pool._in_use_connections

        taken = 0
        wait_for = pool._condition.wait_for

        async def counted(*args: Any) -> Any:
            nonlocal taken
            taken += 1
            return await wait_for(*args)

        pool._condition.wait_for = counted
        await client.echo("alone")
        assert taken == 0  # nobody waited: the free connection was taken directly
    finally:
        await client.aclose()
