"""One pipelined connection per process for the status scripts: the hot path's Redis calls.

An enqueue, a claim and a finish are each one EVALSHA. Through redis-py's asyncio
client each call took a connection from the pool, ran its retry wrapper, parsed
through a StreamReader and gave the connection back: about 35 µs of CPU on top of the
round trip. A `ScriptLine` is one connection that every
coroutine of the process shares: a call writes its packed command to the transport and
waits for a future; the protocol parses replies with hiredis as they arrive and hands
them out in order. Calls that overlap (a worker's concurrent finishes, an API's
concurrent enqueues) are pipelined for free: the event loop sends them in one write.

It is only a faster road to the same place. Whenever it cannot serve a call (a URL
that is not plain TCP or a unix socket, arguments hiredis cannot pack, no connection,
a connection lost mid-call, a reply that says "try again" such as LOADING or
READONLY) the call goes through redis-py as before, with its retries, outage logging
and Sentinel handling, which live in connections.py. A lost connection is tried again
at most once a second. A call that may have run before its connection was lost is
sent again that way, exactly as redis-py's retry would send it: the scripts are
written to be safe to repeat.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError, InvalidResponse, RedisError, ResponseError

Slow = Callable[..., Awaitable[Any]]
RETRY_AFTER = 1.0  # s before a line that could not connect tries again


class _Protocol(asyncio.Protocol):
    def __init__(self, on_push: Callable[[Any], None] | None = None) -> None:
        self.reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error
        )
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        # A subscribed connection: what no call waits for is a message, handed on here.
        self.on_push = on_push
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except InvalidResponse as exc:  # the stream is out of step: drop it
                self.lost = True
                self._fail(ConnectionError(f"Protocol error: {exc}"))
                if self.transport is not None:
                    self.transport.abort()
                return
            if reply is False:
                return
            if not self.pending and self.on_push is not None:
                self.on_push(reply)
                continue
            future = self.pending.popleft()
            if not future.done():  # its caller was cancelled: the reply is dropped
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionError(f"Connection lost: {exc or 'closed by the server'}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, error: Exception) -> None:
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)


class ScriptLine:
    """A shared, pipelined connection for one pool's plain TCP or unix socket Redis."""

    def __init__(
        self,
        connection_kwargs: dict[str, Any],
        *,
        transient: Callable[[BaseException], bool],
    ) -> None:
        kw = connection_kwargs
        self._path: str | None = kw.get("path")
        self._host: str = kw.get("host", "localhost")
        self._port: int = int(kw.get("port", 6379))
        self._connect_timeout: float = kw.get("socket_connect_timeout") or 5.0
        self._keepalive: dict[int, int] = kw.get("socket_keepalive_options") or {}
        self._handshake: list[tuple[Any, ...]] = []
        if kw.get("password") is not None:
            user = kw.get("username")
            self._handshake.append(
                ("AUTH", user, kw["password"]) if user else ("AUTH", kw["password"])
            )
        if kw.get("db"):
            self._handshake.append(("SELECT", kw["db"]))
        if kw.get("client_name"):
            self._handshake.append(("CLIENT", "SETNAME", kw["client_name"]))
        self._transient = transient
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._down_until = 0.0

    @staticmethod
    def supports(connection_kwargs: dict[str, Any]) -> bool:
        """Whether a pool's connections are ones a line can stand in for."""
        kw = connection_kwargs
        return not (
            kw.get("decode_responses")
            or kw.get("credential_provider") is not None
            or str(kw.get("protocol", 2)) == "3"
            or kw.get("encoding", "utf-8") != "utf-8"
            or kw.get("encoding_errors", "strict") != "strict"
        )

    async def call(self, slow: Slow, *command: Any) -> Any:
        """`command`'s reply, as redis-py would give it; through `slow(*command)`
        (redis-py) whenever the line cannot serve it."""
        protocol = self._protocol
        if protocol is None or protocol.lost or asyncio.get_running_loop() is not self._loop:
            protocol = await self._open()
            if protocol is None:
                return await slow(*command)
        try:
            packed = hiredis.pack_command(command)
        except (TypeError, UnicodeEncodeError):  # None, bool...: redis-py's own error
            return await slow(*command)
        reply = await self._send(protocol, packed, slow, command)
        if isinstance(reply, ResponseError):
            if self._transient(reply):
                return await slow(*command)  # LOADING, READONLY...: redis-py retries
            raise reply
        return reply

    async def _send(
        self, protocol: _Protocol, packed: bytes, slow: Slow, command: tuple[Any, ...]
    ) -> Any:
        assert protocol.transport is not None and self._loop is not None
        future = self._loop.create_future()
        try:
            protocol.transport.write(packed)
        except (RuntimeError, OSError):  # closed under us: its loss is on the way
            return await slow(*command)
        protocol.pending.append(future)
        try:
            return await future
        except ConnectionError:
            self._down_until = self._loop.time() + RETRY_AFTER
            return await slow(*command)

    async def _open(self) -> _Protocol | None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a pool reused on another loop
            self._drop()
            self._loop = loop
        if loop.time() < self._down_until:
            return None
        if self._connecting is None:
            self._connecting = loop.create_task(self._connect())
        connecting = self._connecting
        try:
            self._protocol = await asyncio.shield(connecting)
        except (OSError, RedisError, TimeoutError):
            self._down_until = loop.time() + RETRY_AFTER
            return None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if connecting.cancelled() and not (task is not None and task.cancelling()):
                return None  # the line closed while connecting, not this caller
            raise
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        return self._protocol

    async def listen(
        self, channels: Mapping[str, Callable[[Any], None]], *, subscribed: Callable[[], None]
    ) -> None:
        """Subscribe to `channels` (name -> its message handler) on a connection of its
        own, call `subscribed()` once that holds, then each channel's handler with each
        message's data as it is parsed, until the connection is lost (then return) or
        the caller is cancelled. Raises what connecting or subscribing raised."""
        handlers = {name.encode(): handler for name, handler in channels.items()}

        def push(reply: Any) -> None:
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                handler = handlers.get(reply[1])
                if handler is not None:
                    handler(reply[2])

        protocol = await self._connect(push)
        try:
            # One command: Redis writes every confirmation before any message, so the
            # first answers this request and the rest pass as pushes.
            await self._request(protocol, ("SUBSCRIBE", *channels))
            subscribed()
            await protocol.closed
        finally:
            if protocol.transport is not None:
                protocol.transport.close()

    async def _request(self, protocol: _Protocol, command: tuple[Any, ...]) -> Any:
        assert protocol.transport is not None
        future = asyncio.get_running_loop().create_future()
        protocol.pending.append(future)
        protocol.transport.write(hiredis.pack_command(command))
        reply = await future
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def _connect(self, on_push: Callable[[Any], None] | None = None) -> _Protocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            if self._path is not None:
                transport, protocol = await loop.create_unix_connection(
                    lambda: _Protocol(on_push), self._path
                )
            else:
                transport, protocol = await loop.create_connection(
                    lambda: _Protocol(on_push), self._host, self._port
                )
                sock = transport.get_extra_info("socket")
                if sock is not None:  # the same kernel-side give-up as redis-py's sockets
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                    for option, value in self._keepalive.items():
                        sock.setsockopt(socket.IPPROTO_TCP, option, value)
            try:
                for command in self._handshake:
                    await self._request(protocol, command)
            except BaseException:
                transport.close()
                raise
        return protocol

    def _drop(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        transport = self._protocol.transport if self._protocol is not None else None
        if transport is not None and self._loop is not None and not self._loop.is_closed():
            transport.close()
        self._protocol = None

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        self._drop()
        self._down_until = 0.0
