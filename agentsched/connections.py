"""Redis connections: outage handling, Sentinel URLs, and a faster connection class.

Outages. Every client agentsched opens retries transient failures (a dropped or
refused connection, a timeout, LOADING, READONLY after a failover, MASTERDOWN, OOM)
with jittered exponential backoff capped at `BACKOFF_CAP` seconds: forever in a
worker (`retry_seconds=None`), for a bounded time elsewhere. One warning line marks
the start of an outage and one its end, per process, not one per retry.

Sentinel. `redis+sentinel://[:password@]host1:26379,host2:26379/service/db` opens a
pool that asks the sentinels for the current primary and follows a failover.

Speed.
redis-py 5's asyncio connection builds every command in Python (its sync connection
already uses hiredis for this), and each time the pool hands out a connection it probes
the socket with a zero-timeout read. On a worker's hot path those two were about a tenth
of the CPU per job. These subclasses keep redis-py's behaviour and fall back to it
whenever the fast path does not apply:
  - `pack_command` uses `hiredis.pack_command` for str, bytes, int and float arguments
    under strict UTF-8 when the packed command is of ordinary size; anything else (None,
    bool, a memoryview, a large command, a whitespace-split command name, another
    encoding) takes redis-py's own path, and `pack_commands` is redis-py's, chunking as
    it does;
  - `can_read_destructive` answers "no" at once when the parser has no buffered reply and
    the stream has no data, no EOF and no error, and otherwise runs redis-py's check;
  - a bounded pool (`BoundedPool`) hands out and takes back a free connection without
    redis-py's Condition and timeout while no caller waits (13 µs -> 3 µs a command);
  - the pools of plain URLs offer a `ScriptLine` (script_line.py) for the status
    scripts' hot path, and close it with their connections.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import hiredis
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TimeoutError,
)

from agentsched.script_line import ScriptLine

# A RESP bulk header of 5 digits or more: a value of 10,000 bytes or more (redis-py's
# cutoff is 6,000; 6,000-9,999-byte values are copied once, which is harmless).
_LONG_BULK = re.compile(rb"\$\d{5,}\r\n")


def _plain(name: Any) -> bool:
    """A command name hiredis packs as redis-py does (which splits "CONFIG GET" in two)."""
    return isinstance(name, str | bytes) and name.split() == [name]


class _FastPath(AbstractConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        encoder = self.encoder
        if (
            args
            and encoder.encoding == "utf-8"
            and encoder.encoding_errors == "strict"
            and _plain(args[0])
            and memoryview not in map(type, args)  # hiredis mispacks a strided one
        ):
            try:
                packed = hiredis.pack_command(args)
            except (TypeError, UnicodeEncodeError):
                pass  # None, bool, a lone surrogate...: redis-py's own path and error
            else:
                # redis-py sends a value over its cutoff as a chunk of its own, uncopied.
                # Only a command that long can hold one; the bulk headers ($<length>)
                # say, in C, without a look at each of (say) 30,000 arguments. A value
                # that merely contains such a header takes redis-py's path: same bytes.
                if len(packed) <= self._buffer_cutoff or not _LONG_BULK.search(packed):
                    return [packed]
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


class _Reconnecting(AbstractConnection):
    """Connecting counts as one step for the retry policy, handshake included.

    redis-py retries the TCP connect, but a server that dies between accepting the
    socket and answering the handshake (HELLO, SELECT) raises out of the pool, outside
    any retry; the whole connect is retried here.
    """

    async def connect(self) -> None:
        async def attempt() -> None:
            await super(_Reconnecting, self).connect()  # type: ignore[no-untyped-call]

        async def reset(_error: Any) -> None:
            await self.disconnect()

        await self.retry.call_with_retry(attempt, reset)


class FastConnection(_Reconnecting, _FastPath, Connection):
    pass


class FastSSLConnection(_Reconnecting, _FastPath, SSLConnection):
    pass


class FastUnixConnection(_Reconnecting, _FastPath, UnixDomainSocketConnection):
    pass


class LinedPool(ConnectionPool):
    """A pool of plain TCP or unix socket connections, with its script line."""

    _line: ScriptLine | None = None

    def script_line(self) -> ScriptLine | None:
        if (
            self._line is None
            and self.connection_class in (FastConnection, FastUnixConnection)
            and ScriptLine.supports(self.connection_kwargs)
        ):
            self._line = ScriptLine(self.connection_kwargs, transient=is_transient)
        return self._line

    async def disconnect(self, inuse_connections: bool = True) -> None:
        if self._line is not None:
            self._line.close()
            self._line = None
        await super().disconnect(inuse_connections)


def script_line_of(client: Redis) -> ScriptLine | None:
    """The script line of `client`'s pool, or None (a pool without one, e.g. a caller's own)."""
    script_line = getattr(client.connection_pool, "script_line", None)
    return script_line() if script_line is not None else None


class BoundedPool(LinedPool, BlockingConnectionPool):
    """redis-py's BlockingConnectionPool, without its lock while nobody waits.

    redis-py takes an asyncio.Condition and starts a timeout to hand out each connection,
    and takes the Condition again to return it (with the deprecation check of its
    arguments, about 15 µs a command). On one event loop nothing comes between "a
    connection is free" and taking it, so while no caller waits a free connection is
    taken and given back directly; once one has to wait, every caller and every release
    goes the Condition's way until no one waits, so a waiter is always woken.
    """

    _waiting = 0

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if self._waiting or not self.can_get_connection():
            self._waiting += 1
            try:
                return await super().get_connection()
            finally:
                self._waiting -= 1
        connection = self.get_available_connection()  # type: ignore[no-untyped-call]
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        if self._waiting:
            await super().release(connection)
        else:
            await ConnectionPool.release(self, connection)


class ResilientSentinelConnection(SentinelManagedConnection):
    """Each connect asks the sentinels for the primary again, however long it takes.

    redis-py retries the TCP connect to the address it got, so with a retry policy
    that never gives up it would knock on a dead primary forever; here one address
    gets one try, and the outer retry asks the sentinels again.
    """

    async def connect_to(self, address: Any) -> None:
        outer = self.retry
        self.retry = Retry(NoBackoff(), 0)
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self.retry = outer


_FAST: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: FastConnection,
    SSLConnection: FastSSLConnection,
    UnixDomainSocketConnection: FastUnixConnection,
}


log = logging.getLogger("agentsched.redis")
T = TypeVar("T")
BACKOFF_CAP = 2.0
# How long a client outside a worker waits for Redis before giving up (see README).
DEFAULT_RETRY_SECONDS = 5.0
# Replies of a Redis that is alive but cannot serve now: retried like a lost connection.
_TRANSIENT_REPLIES = ("MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS")


def is_transient(exc: BaseException) -> bool:
    """A Redis failure that goes away by itself (outage, failover, loading, full memory)."""
    if isinstance(exc, AuthenticationError):
        return False
    if isinstance(exc, OSError):
        return True  # refused, reset or timed out while connecting
    if isinstance(exc, ConnectionError | TimeoutError | OutOfMemoryError | ReadOnlyError):
        return True  # BusyLoadingError (LOADING) is a ConnectionError
    return isinstance(exc, ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`, for a one-line log or error."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Outage:
    """This process's view of Redis: logs once when it stops answering and once when back."""

    # A connection opened before an outage ended can still fail once afterwards (a
    # blocking read, a subscription): within this many seconds of the end, that is the
    # same outage's tail, not a new one to log.
    SETTLE = 3.0

    def __init__(self) -> None:
        self.since: float | None = None
        self.failures = 0
        self._ended = -1e9
        self._tail = False
        # Called (synchronously, in the event loop) when Redis answers again.
        self.on_recovered: list[Callable[[], None]] = []

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            self._tail = self.since - self._ended < self.SETTLE
            if not self._tail:
                log.warning("Redis is unavailable (%s); retrying with backoff", describe(exc))
        elif self._tail and time.monotonic() - self.since >= self.SETTLE:
            self._tail = False  # not a tail after all: a new outage
            log.warning("Redis is unavailable (%s); retrying with backoff", describe(exc))

    def recovered(self) -> None:
        if self.since is not None:
            now = time.monotonic()
            if not self._tail:
                log.warning(
                    "Redis answers again after %.1fs (%d failed call(s))",
                    now - self.since,
                    self.failures,
                )
            self.since, self.failures, self._ended = None, 0, now
            for callback in list(self.on_recovered):
                callback()


OUTAGE = Outage()


class OutageRetry(Retry):
    """redis-py's retry hook: transient errors back off with jitter, for `seconds` or forever.

    Connections deep-copy their retry object; the outage state is the module's `OUTAGE`,
    so every connection of the process reports to the same two log lines.
    """

    def __init__(self, seconds: float | None) -> None:
        super().__init__(ExponentialWithJitterBackoff(cap=BACKOFF_CAP, base=0.05), -1)
        self.seconds = seconds

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Callable[[Any], Any]
    ) -> T:
        failures = 0
        started = 0.0
        while True:
            try:
                result = await do()
            except (RedisError, OSError) as error:  # OSError: from opening a connection
                if not is_transient(error):
                    raise
                await fail(error)  # drops the broken connection; the next try reconnects
                failures += 1
                if failures == 1:
                    started = time.monotonic()
                OUTAGE.failed(error)
                waited = time.monotonic() - started
                if self.seconds is not None and waited >= self.seconds:
                    raise
                pause = self._backoff.compute(failures)
                if self.seconds is not None:
                    pause = min(pause, max(0.0, self.seconds - waited))
                await asyncio.sleep(pause)
            else:
                if failures:
                    OUTAGE.recovered()
                return result


_KEEPALIVE: dict[int, int] = {
    option: value
    for name, value in (
        ("TCP_KEEPIDLE", 5),
        ("TCP_KEEPINTVL", 2),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", 12_000),
    )
    if (option := getattr(socket, name, None)) is not None
}


def _retry_options(retry_seconds: float | None) -> dict[str, Any]:
    return {
        # 0: one try, nothing logged (a start-up probe says what failed itself).
        "retry": Retry(NoBackoff(), 0) if retry_seconds == 0 else OutageRetry(retry_seconds),
        # Which errors redis-py lets reach the retry at all; OutageRetry then decides.
        "retry_on_error": [ConnectionError, TimeoutError, ResponseError, BusyLoadingError],
        "socket_connect_timeout": 5,
        # A partitioned Redis must not hang a call forever. No socket_timeout: it would
        # cut blocking reads, and arq's loop does not stop on cancel inside one.
        # Instead the kernel gives up on a silent peer: keepalive probes for an idle
        # connection, a user timeout for unacknowledged data.
        "socket_keepalive": True,
        "socket_keepalive_options": _KEEPALIVE,
    }


class _SentinelPool(SentinelConnectionPool):
    """Closes its connections to the sentinels too when it closes."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        for client in self.sentinel_manager.sentinels:
            await client.connection_pool.disconnect()


def is_sentinel_url(url: str) -> bool:
    return url.startswith("redis+sentinel://")


def _sentinel_pool(url: str, **kwargs: Any) -> SentinelConnectionPool:
    """`redis+sentinel://[[user]:password@]h1:26379,h2:26379/service[/db]`."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    addresses: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        addresses.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    service = path[0]
    db = int(path[1]) if len(path) > 1 else 0
    auth: dict[str, Any] = {}
    if password:
        auth["password"] = unquote(password)
    if username:
        auth["username"] = unquote(username)
    # The password is the Redis servers'; the sentinels are asked without one.
    timeouts = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kwargs}
    sentinel = Sentinel(addresses, sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
    pool = _SentinelPool(  # type: ignore[no-untyped-call]
        service, sentinel, db=db, connection_class=ResilientSentinelConnection, **auth, **kwargs
    )
    return pool


def connection_pool(
    url: str, *, retry_seconds: float | None = DEFAULT_RETRY_SECONDS, **kwargs: Any
) -> ConnectionPool:
    """A pool for `url` whose connections ride out outages (`retry_seconds=None`: forever).

    Plain URLs use the fast variant of their connection class; Sentinel URLs redis-py's
    Sentinel-managed connections. With `max_connections` a plain URL's pool never opens
    more: a call waits for a free connection (for `retry_seconds`, or as long as it
    takes), then raises ConnectionError ("No connection available"), a 503 in the API.
    """
    options = {**_retry_options(retry_seconds), **kwargs}
    if options.get("max_connections") is None:
        options.pop("max_connections", None)
    if is_sentinel_url(url):
        return _sentinel_pool(url, **options)
    if "max_connections" in options:
        wait = None if retry_seconds is None else max(retry_seconds, 1.0)
        pool: ConnectionPool = BoundedPool.from_url(url, timeout=wait, **options)
    else:
        pool = LinedPool.from_url(url, **options)
    pool.connection_class = _FAST.get(pool.connection_class, pool.connection_class)
    return pool


def redis_client(
    url: str, *, retry_seconds: float | None = DEFAULT_RETRY_SECONDS, **kwargs: Any
) -> Redis:
    """A client on `connection_pool(url, ...)` (the pool closes with the client)."""
    return Redis.from_pool(connection_pool(url, retry_seconds=retry_seconds, **kwargs))
