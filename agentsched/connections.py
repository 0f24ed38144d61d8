"""Redis connections that pack commands in C and check a pooled socket without a read.

redis-py 5's asyncio connection builds every command in Python (its sync connection
already uses hiredis for this), and each time the pool hands out a connection it probes
the socket with a zero-timeout read. On a worker's hot path those two were about a tenth
of the CPU per job. These subclasses keep redis-py's behaviour and fall back to it
whenever the fast path does not apply:
  - `pack_command` uses `hiredis.pack_command` for str, bytes, int and float arguments;
    anything else (None, bool, a spaced command name) takes redis-py's own path and error;
  - `can_read_destructive` answers "no" at once when the parser has no buffered reply and
    the stream has neither data nor EOF, and otherwise runs redis-py's check.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)


def _spaced(name: Any) -> bool:
    """redis-py splits a command name like "CONFIG GET" into two arguments."""
    if isinstance(name, str):
        return " " in name
    return isinstance(name, bytes) and b" " in name


class _FastPath(AbstractConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        if _spaced(args[0] if args else None) or self.encoder.encoding != "utf-8":
            return super().pack_command(*args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # None, bool, ...: redis-py raises its own DataError
            return super().pack_command(*args)

    def pack_commands(self, commands: Any) -> list[bytes]:
        pieces: list[bytes] = []
        for command in commands:
            pieces.extend(self.pack_command(*command))
        return [b"".join(pieces)]

    async def can_read_destructive(self) -> bool:
        parser: Any = self._parser
        stream: Any = getattr(parser, "_stream", None)
        reader: Any = getattr(parser, "_reader", None)
        if (
            getattr(parser, "_connected", False)
            and stream is not None
            and hasattr(reader, "has_data")
            and not getattr(stream, "_buffer", True)
            and not stream.at_eof()
            and not reader.has_data()
        ):
            return False
        return bool(await super().can_read_destructive())  # type: ignore[no-untyped-call]


class FastConnection(_FastPath, Connection):
    pass


class FastSSLConnection(_FastPath, SSLConnection):
    pass


class FastUnixConnection(_FastPath, UnixDomainSocketConnection):
    pass


_FAST: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: FastConnection,
    SSLConnection: FastSSLConnection,
    UnixDomainSocketConnection: FastUnixConnection,
}


def connection_pool(url: str, **kwargs: Any) -> ConnectionPool:
    """`ConnectionPool.from_url` with the fast variant of the URL's connection class."""
    pool = ConnectionPool.from_url(url, **kwargs)
    pool.connection_class = _FAST.get(pool.connection_class, pool.connection_class)
    return pool


def redis_client(url: str, **kwargs: Any) -> Redis:
    """`Redis.from_url` on a fast connection pool (closed with the client)."""
    return Redis.from_pool(connection_pool(url, **kwargs))
