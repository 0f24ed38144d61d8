"""Observability: Prometheus metrics, OpenTelemetry spans and structured logs.

- `metrics.py` defines every metric and the functions code calls to count;
- `series.py` keeps their numbers, hands them to prometheus-client's registry and
  renders them for a metrics port;
- `scrape.py` reads the Redis gauges at scrape time and serves a metrics port;
- `tracing.py` makes spans when OpenTelemetry is installed and configured;
- `logs.py` formats log lines (text or JSON) with the execution they are about.

This package needs only the leaves (settings, keys, serialization), so every layer
can call it. `observe_process` is the one call a worker or an API makes at start-up.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from prometheus_client import disable_created_metrics

from agentsched.keys import Keys
from agentsched.observability import logs, metrics, tracing
from agentsched.observability.scrape import MetricsServer, Source
from agentsched.settings import Settings

__all__ = ["MetricsServer", "observe_process"]


def observe_process(settings: Settings, redis: aioredis.Redis) -> MetricsServer:
    """Apply the observability settings to this process and start its metrics.

    Counts (or not) per `AGENTSCHED_METRICS_ENABLED`, reads the app's queue gauges
    from `redis` at scrape time, serves `AGENTSCHED_METRICS_PORT` on
    `AGENTSCHED_METRICS_HOST` when set, allows spans per `AGENTSCHED_TRACING` and
    formats logs per `AGENTSCHED_LOG_FORMAT`.
    Call `stop()` on the result at shutdown.
    """
    # `_created` samples double every counter's lines in the text format, and Prometheus
    # does not use them there: off for the whole process (prometheus-client's switch).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    metrics.configure(settings.metrics_enabled)
    tracing.configure(settings.tracing)
    logs.install(settings.log_format, settings.app)
    source = Source(
        asyncio.get_running_loop(),
        redis,
        Keys(settings.redis_prefix, settings.app),
        settings.lease_seconds,
    )
    return MetricsServer(source, settings.metrics_port, settings.metrics_host).start()
