"""Redis connections that pack commands in C and check a pooled socket without a read.

redis-py 5's asyncio connection builds every command in Python (its sync connection
already uses hiredis for this), and each time the pool hands out a connection it probes
the socket with a zero-timeout read. On a worker's hot path those two were about a tenth
of the CPU per job. These subclasses keep redis-py's behaviour and fall back to it
whenever the fast path does not apply:
  - `pack_command` uses `hiredis.pack_command` for str, bytes, int and float arguments
    of ordinary size under strict UTF-8; anything else (None, bool, a memoryview, a large
    value, a whitespace-split command name, another encoding) takes redis-py's own path,
    and `pack_commands` is redis-py's, chunking as it does;
  - `can_read_destructive` answers "no" at once when the parser has no buffered reply and
    the stream has no data, no EOF and no error, and otherwise runs redis-py's check.
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


def _plain(args: tuple[Any, ...], cutoff: int) -> bool:
    """Arguments hiredis packs to redis-py's exact bytes without a large copy."""
    name = args[0]
    # redis-py splits a name like "CONFIG GET" on whitespace into two arguments.
    if not isinstance(name, (str, bytes)) or name.split() != [name]:
        return False
    for arg in args:
        # redis-py sends memoryviews and large values as their own chunks, uncopied.
        if isinstance(arg, memoryview) or (isinstance(arg, (str, bytes)) and len(arg) > cutoff):
            return False
    return True


class _FastPath(AbstractConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        encoder = self.encoder
        if (
            args
            and encoder.encoding == "utf-8"
            and encoder.encoding_errors == "strict"
            and _plain(args, self._buffer_cutoff)
        ):
            try:
                return [hiredis.pack_command(args)]
            except (TypeError, UnicodeEncodeError):
                pass  # None, bool, a lone surrogate...: redis-py's own path and error
        return super().pack_command(*args)

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
            and stream.exception() is None  # a reset socket is not at EOF
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
