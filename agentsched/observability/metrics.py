"""Every Prometheus metric of agentsched, and the small functions code calls to count.

The only module that defines metric objects: names, labels and help texts are here
and nowhere else. Other modules call one function per event (`enqueued`, `finished`,
...). Labels are the app, the task function, a status, a reason: never an execution
id or an argument value, so the number of series stays bounded.

The numbers are kept per process in `series.py` (plain numbers, cheap to count and
to render) and reach prometheus-client's default registry through one collector: each
API and each worker is scraped on its own and Prometheus sums them. `render()` is the
fast text of the whole registry. `configure(False)` (from
`AGENTSCHED_METRICS_ENABLED=false`) makes every counting call return at once.

The gauges read from Redis at scrape time (queue depth, live workers, recorder lag)
are in `scrape.py`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from prometheus_client import REGISTRY

from agentsched.observability.series import Collector, CounterFamily, HistogramFamily

_enabled = True

# Seconds: from a few ms (no-op jobs) to hour-long tasks. Few buckets: this histogram
# has one series per function, and a scrape's cost grows with every bucket of each.
RUN_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 300, 3600)
# Seconds: pickup and schedule lag are milliseconds when healthy, minutes when not.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

ENQUEUED = CounterFamily(
    "agentsched_executions_enqueued",
    "Executions enqueued by this process.",
    ["app", "function"],
)
FINISHED = CounterFamily(
    "agentsched_executions_finished",
    "Executions that ended in this process: status success, failed or cancelled; "
    "error_kind is empty for success and cancelled.",
    ["app", "function", "status", "error_kind"],
)
RETRIED = CounterFamily(
    "agentsched_executions_retried",
    "Failed attempts sent back to the queue for another attempt.",
    ["app", "function"],
)
DURATION = HistogramFamily(
    "agentsched_execution_duration_seconds",
    "Run time of one attempt of a task, in seconds.",
    ["app", "function"],
    RUN_BUCKETS,
)
PICKUP = HistogramFamily(
    "agentsched_pickup_delay_seconds",
    "From the time an attempt was due to the time a worker started it, in seconds.",
    ["app"],
    LAG_BUCKETS,
)
FIRE_LAG = HistogramFamily(
    "agentsched_schedule_fire_lag_seconds",
    "From a schedule's fire time to its enqueue, in seconds.",
    ["app"],
    LAG_BUCKETS,
)
SKIPPED = CounterFamily(
    "agentsched_schedule_skipped",
    "Fire times not run: reason overlap (the previous run was still going), misfire "
    "(missed and dropped by the misfire policy) or unrunnable (the function is not "
    "registered in this worker, or its arguments no longer fit it).",
    ["app", "reason"],
)
PUBLISHED = CounterFamily(
    "agentsched_events_published",
    "Events published: through EventBus.publish, and the task.* lifecycle events of the "
    "executions this process moved; event_type is the first dotted segment.",
    ["app", "event_type"],
)
DELIVERED = CounterFamily(
    "agentsched_events_delivered",
    "Events handed to this app's subscribers and callbacks (redeliveries included).",
    ["app"],
)
REDELIVERED = CounterFamily(
    "agentsched_events_redelivered",
    "Events handed out again after a handler failed or its consumer died.",
    ["app"],
)
DEAD_LETTERED = CounterFamily(
    "agentsched_events_dead_lettered",
    "Events moved to the dead-letter stream by this app's consumer group.",
    ["app"],
)
RECORDER_ROWS = CounterFamily(
    "agentsched_recorder_rows",
    "Execution snapshots written to SQL by this process's recorder.",
    ["app"],
)
RECONCILED = CounterFamily(
    "agentsched_reconciled",
    "Executions the reconciler repaired between SQL and Redis, by action.",
    ["app", "action"],
)


COLLECTOR = Collector(
    [
        *(ENQUEUED, FINISHED, RETRIED, DURATION, PICKUP, FIRE_LAG, SKIPPED, PUBLISHED),
        *(DELIVERED, REDELIVERED, DEAD_LETTERED, RECORDER_ROWS, RECONCILED),
    ]
)
REGISTRY.register(COLLECTOR)
render = COLLECTOR.render


def configure(enabled: bool) -> None:
    """Turn counting on or off for this process (`AGENTSCHED_METRICS_ENABLED`)."""
    global _enabled
    _enabled = enabled


# The status scripts write the `task.*` lifecycle events to the bus stream: the calls
# below that stand for a transition count its event too, as `task` events published.
def enqueued(app: str, function: str, count: int = 1) -> None:
    if _enabled:
        ENQUEUED.inc((app, function), count)
        PUBLISHED.inc((app, "task"), count)  # task.queued


def finished(app: str, function: str, status: str, error_kind: str = "") -> None:
    """An execution reached a terminal status (the retry of a failed attempt is `retried`)."""
    if _enabled:
        FINISHED.inc((app, function, status, error_kind if status == "failed" else ""))
        PUBLISHED.inc((app, "task"))  # task.completed, task.failed, task.cancelled


def retried(app: str, function: str) -> None:
    if _enabled:
        RETRIED.inc((app, function))
        PUBLISHED.inc((app, "task"))  # task.retrying


def task_events(app: str, count: int = 1) -> None:
    """Lifecycle events written without one of the calls above (progress, recoveries)."""
    if _enabled and count:
        PUBLISHED.inc((app, "task"), count)


def attempt_ran(app: str, function: str, seconds: float) -> None:
    if _enabled:
        DURATION.observe((app, function), seconds)


def picked_up(app: str, seconds: float) -> None:
    if _enabled:
        PICKUP.observe((app,), max(seconds, 0.0))
        PUBLISHED.inc((app, "task"))  # task.started


def schedule_fired(
    app: str, lags: list[float], overlap: int = 0, misfire: int = 0, unrunnable: int = 0
) -> None:
    """One batch of due schedules: lags of the enqueued runs, counts of fire times not run."""
    if not _enabled:
        return
    for lag in lags:
        FIRE_LAG.observe((app,), max(lag, 0.0))
    for reason, count in (("overlap", overlap), ("misfire", misfire), ("unrunnable", unrunnable)):
        if count:
            SKIPPED.inc((app, reason), count)


def event_published(app: str, event_type: str) -> None:
    if _enabled:
        PUBLISHED.inc((app, event_type.split(".", 1)[0]))


def events_delivered(app: str, count: int = 1, *, redelivered: int = 0) -> None:
    if _enabled:
        if count:
            DELIVERED.inc((app,), count)
        if redelivered:
            REDELIVERED.inc((app,), redelivered)


def events_dead_lettered(app: str, count: int = 1) -> None:
    if _enabled and count:
        DEAD_LETTERED.inc((app,), count)


def recorder_rows(apps: Iterable[str]) -> None:
    """Rows just committed by a recorder, one app name per row (the stream has all apps)."""
    if _enabled:
        for app, count in collections.Counter(apps).items():
            RECORDER_ROWS.inc((app,), count)


def count_reconciled(app: str, action: str) -> None:
    """The reconciler repaired one execution; `action` names what it did (a short word)."""
    if _enabled:
        RECONCILED.inc((app, action))
        if action in ("requeued", "recovered", "failed"):  # those write a lifecycle event
            PUBLISHED.inc((app, "task"))
