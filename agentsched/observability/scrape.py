"""What a scrape reads from Redis, and the metrics port of a process.

`RedisGauges` is a prometheus-client collector: at each scrape it asks Redis, in one
pipelined round trip per app, for the queue depth (`agentsched_queue_jobs`), the live
workers (`agentsched_workers_alive`) and the age of the oldest execution snapshot not
yet written to SQL (`agentsched_recorder_lag_seconds`). prometheus-client collects in
the scraping thread; the Redis client belongs to the process's event loop, so the read
is handed to that loop and the thread waits for it (at most `READ_TIMEOUT`). A scrape
must therefore never run on the loop itself: the API renders in a thread.

`MetricsServer` serves the default registry on `AGENTSCHED_METRICS_HOST` and
`AGENTSCHED_METRICS_PORT` (a daemon thread, a thread per request), without the API key:
hence 127.0.0.1 unless a scraper elsewhere must reach it. It answers with
`metrics.render()` (agentsched's own series written directly, the rest through
prometheus-client), gzipped when asked, and stops at once, not at its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agentsched.keys import Keys
from agentsched.observability import metrics

log = logging.getLogger("agentsched.metrics")
READ_TIMEOUT = 2.0
# A worker counts as alive while its heartbeat is younger than this many leases
# (the same rule as GET /health).
LIVE_LEASES = 3


@dataclass(frozen=True, slots=True)
class Source:
    """One app's Redis, read on the loop that owns the client."""

    loop: asyncio.AbstractEventLoop
    redis: aioredis.Redis
    keys: Keys
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class Reading:
    queued: int
    deferred: int
    running: int
    workers: int
    recorder_lag: float


async def read(source: Source) -> Reading:
    """The app's gauges from Redis, in one pipelined round trip."""
    k, now = source.keys, int(time.time() * 1000)
    since = now - int(LIVE_LEASES * source.lease_seconds * 1000)
    async with source.redis.pipeline(transaction=False) as pipe:
        pipe.zcount(k.queue, "-inf", now)
        pipe.zcount(k.queue, f"({now}", "+inf")
        pipe.scard(k.running)
        pipe.zcount(k.workers, since, "+inf")
        # The recorder deletes what it wrote, so the first entry is the oldest not in SQL.
        pipe.xrange(k.records, "-", "+", count=1)
        due, deferred, running, workers, oldest = await pipe.execute()
    lag = 0.0
    if oldest:
        raw = oldest[0][0]
        entry_ms = int((raw.decode() if isinstance(raw, bytes) else raw).split("-")[0])
        lag = max(now - entry_ms, 0) / 1000
    # arq keeps a running job in its queue until it ends: due entries include them.
    return Reading(max(int(due) - int(running), 0), int(deferred), int(running), int(workers), lag)


class RedisGauges(Collector):
    """Collector of the gauges read from Redis at scrape time, for every registered app."""

    def __init__(self) -> None:
        self._sources: list[Source] = []
        self._lock = threading.Lock()

    def add(self, source: Source) -> None:
        with self._lock:
            self._sources.append(source)

    def remove(self, source: Source) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._sources.remove(source)

    def describe(self) -> Iterator[Any]:
        # Without describe() the registry would call collect() (and Redis) at registration.
        return iter(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "agentsched_queue_jobs",
                "Jobs in the app's queue by state: queued (due), deferred (due later), running.",
                labels=["app", "state"],
            ),
            GaugeMetricFamily(
                "agentsched_workers_alive",
                "Workers of the app whose heartbeat is recent.",
                labels=["app"],
            ),
            GaugeMetricFamily(
                "agentsched_recorder_lag_seconds",
                "Age of the oldest execution snapshot not yet written to SQL (0: none waiting).",
                labels=["app"],
            ),
        )

    def collect(self) -> Iterator[Any]:
        queue, workers, lag = self._families()
        with self._lock:
            sources = list(self._sources)
        seen: set[str] = set()
        for source in sources:
            if source.keys.app in seen:
                continue
            reading = self._read(source)
            if reading is None:
                continue
            seen.add(source.keys.app)
            app = source.keys.app
            queue.add_metric([app, "queued"], reading.queued)
            queue.add_metric([app, "deferred"], reading.deferred)
            queue.add_metric([app, "running"], reading.running)
            workers.add_metric([app], reading.workers)
            lag.add_metric([app], reading.recorder_lag)
        return iter((queue, workers, lag))

    @staticmethod
    def _read(source: Source) -> Reading | None:
        if source.loop.is_closed():
            return None
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is source.loop:
                return None  # waiting here would block the loop that must answer
        try:
            future = asyncio.run_coroutine_threadsafe(read(source), source.loop)
            return future.result(READ_TIMEOUT)
        except FutureTimeout:
            future.cancel()
            log.warning("metrics: Redis did not answer within %.0fs", READ_TIMEOUT)
        except Exception as exc:  # a scrape shows what it can; Redis trouble is logged
            log.warning("metrics: cannot read queue gauges: %s", exc)
        return None


GAUGES = RedisGauges()
REGISTRY.register(GAUGES)


def metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI app of a metrics port: the text format of the default registry."""
    if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"metrics are at /metrics\n"]
    body = metrics.render()
    headers = [("Content-Type", CONTENT_TYPE_LATEST)]
    if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
        # Level 1: 170 KB of samples become 8 KB in 0.2 ms (level 9: 6.7 KB in 3 ms).
        body = gzip.compress(body, compresslevel=1)
        headers.append(("Content-Encoding", "gzip"))
    start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up a shutdown

    def serve_until_woken(self, wake: socket.socket) -> None:
        # socketserver's serve_forever() notices a shutdown only at its next poll (0.5 s
        # by default), and every worker's shutdown would wait that long; this loop
        # sleeps until a scrape or the wake-up byte, whichever comes first.
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is wake for key, _ in ready):
                    return
                self.handle_request()


class MetricsServer:
    """This process's metrics on its own port, plus the Redis gauges of its app."""

    def __init__(self, source: Source | None, port: int | None, host: str = "127.0.0.1") -> None:
        self.source = source
        self.port = port
        self.host = host
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None

    def start(self) -> MetricsServer:
        if self.source is not None:
            GAUGES.add(self.source)
        if self.port is not None:
            try:
                self._serve(self.port)
            except OSError as exc:  # jobs matter more than their metrics: keep running
                log.error(
                    "AGENTSCHED_METRICS_PORT: cannot serve on %s:%s: %s", self.host, self.port, exc
                )
            else:
                log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    def _serve(self, port: int) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_class = type("_MetricsServer", (_Server,), {"address_family": family})
        server = server_class((self.host, port), _QuietHandler)
        server.set_app(metrics_app)
        self._server, self._wake = server, socket.socketpair()
        self._thread = threading.Thread(
            target=server.serve_until_woken,
            args=(self._wake[0],),
            name="agentsched-metrics",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self.source is not None:
            GAUGES.remove(self.source)
        if self._server is not None and self._wake is not None and self._thread is not None:
            self._wake[1].send(b"x")
            self._thread.join(5)
            self._server.server_close()
            for end in self._wake:
                end.close()
            self._server = self._thread = self._wake = None
