"""Every Prometheus metric of agentsched, and the small functions code calls to count.

The only module that defines metric objects: names, labels and help texts are here
and nowhere else. Other modules call one function per event (`enqueued`, `finished`,
...). Labels are the app, the task function, a status, a reason: never an execution
id or an argument value, so the number of series stays bounded.

Metrics live in prometheus-client's default registry, per process: each API and each
worker is scraped on its own and Prometheus sums them. `configure(False)` (from
`AGENTSCHED_METRICS_ENABLED=false`) makes every counting call return at once.

The gauges read from Redis at scrape time (queue depth, live workers, recorder lag)
are in `scrape.py`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Histogram

# Label children by label values: prometheus-client's `labels()` takes a lock and
# builds a key on every call; a dict lookup is a fraction of that on the job path.
_children: dict[tuple[Any, ...], Any] = {}
_enabled = True

# Seconds: from a few ms (no-op jobs) to hour-long tasks. Few buckets: this histogram
# has one series per function, and a scrape's cost grows with every bucket of each.
RUN_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 300, 3600)
# Seconds: pickup and schedule lag are milliseconds when healthy, minutes when not.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

ENQUEUED = Counter(
    "agentsched_executions_enqueued",
    "Executions enqueued by this process.",
    ["app", "function"],
)
FINISHED = Counter(
    "agentsched_executions_finished",
    "Executions that ended in this process: status success, failed or cancelled; "
    "error_kind is empty for success and cancelled.",
    ["app", "function", "status", "error_kind"],
)
RETRIED = Counter(
    "agentsched_executions_retried",
    "Failed attempts sent back to the queue for another attempt.",
    ["app", "function"],
)
DURATION = Histogram(
    "agentsched_execution_duration_seconds",
    "Run time of one attempt of a task, in seconds.",
    ["app", "function"],
    buckets=RUN_BUCKETS,
)
PICKUP = Histogram(
    "agentsched_pickup_delay_seconds",
    "From the time an attempt was due to the time a worker started it, in seconds.",
    ["app"],
    buckets=LAG_BUCKETS,
)
FIRE_LAG = Histogram(
    "agentsched_schedule_fire_lag_seconds",
    "From a schedule's fire time to its enqueue, in seconds.",
    ["app"],
    buckets=LAG_BUCKETS,
)
SKIPPED = Counter(
    "agentsched_schedule_skipped",
    "Fire times not run: reason overlap (the previous run was still going) or misfire.",
    ["app", "reason"],
)
PUBLISHED = Counter(
    "agentsched_events_published",
    "Events published through EventBus.publish; event_type is its first dotted segment.",
    ["app", "event_type"],
)
DELIVERED = Counter(
    "agentsched_events_delivered",
    "Events handed to this app's subscribers and callbacks (redeliveries included).",
    ["app"],
)
REDELIVERED = Counter(
    "agentsched_events_redelivered",
    "Events handed out again after a handler failed or its consumer died.",
    ["app"],
)
DEAD_LETTERED = Counter(
    "agentsched_events_dead_lettered",
    "Events moved to the dead-letter stream by this app's consumer group.",
    ["app"],
)
RECORDER_ROWS = Counter(
    "agentsched_recorder_rows",
    "Execution snapshots written to SQL by this process's recorder.",
    ["app"],
)
RECONCILED = Counter(
    "agentsched_reconciled",
    "Executions the reconciler repaired between SQL and Redis, by action.",
    ["app", "action"],
)


def configure(enabled: bool) -> None:
    """Turn counting on or off for this process (`AGENTSCHED_METRICS_ENABLED`)."""
    global _enabled
    _enabled = enabled


def _child(metric: Any, *values: str) -> Any:
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def enqueued(app: str, function: str) -> None:
    if _enabled:
        _child(ENQUEUED, app, function).inc()


def finished(app: str, function: str, status: str, error_kind: str = "") -> None:
    """An execution reached a terminal status (the retry of a failed attempt is `retried`)."""
    if _enabled:
        kind = error_kind if status == "failed" else ""
        _child(FINISHED, app, function, status, kind).inc()


def retried(app: str, function: str) -> None:
    if _enabled:
        _child(RETRIED, app, function).inc()


def attempt_ran(app: str, function: str, seconds: float) -> None:
    if _enabled:
        _child(DURATION, app, function).observe(seconds)


def picked_up(app: str, seconds: float) -> None:
    if _enabled:
        _child(PICKUP, app).observe(max(seconds, 0.0))


def schedule_fired(app: str, lags: list[float], overlap: int = 0, misfire: int = 0) -> None:
    """One tick's outcome for one schedule: lags of the enqueued runs, counts of skips."""
    if not _enabled:
        return
    for lag in lags:
        _child(FIRE_LAG, app).observe(max(lag, 0.0))
    if overlap:
        _child(SKIPPED, app, "overlap").inc(overlap)
    if misfire:
        _child(SKIPPED, app, "misfire").inc(misfire)


def event_published(app: str, event_type: str) -> None:
    if _enabled:
        _child(PUBLISHED, app, event_type.split(".", 1)[0]).inc()


def events_delivered(app: str, count: int = 1, *, redelivered: int = 0) -> None:
    if _enabled:
        if count:
            _child(DELIVERED, app).inc(count)
        if redelivered:
            _child(REDELIVERED, app).inc(redelivered)


def events_dead_lettered(app: str, count: int = 1) -> None:
    if _enabled and count:
        _child(DEAD_LETTERED, app).inc(count)


def recorder_rows(apps: Iterable[str]) -> None:
    """Rows just committed by a recorder, one app name per row (the stream has all apps)."""
    if _enabled:
        for app, count in collections.Counter(apps).items():
            _child(RECORDER_ROWS, app).inc(count)


def count_reconciled(app: str, action: str) -> None:
    """The reconciler repaired one execution; `action` names what it did (a short word)."""
    if _enabled:
        _child(RECONCILED, app, action).inc()
