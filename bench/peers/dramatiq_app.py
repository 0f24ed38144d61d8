"""dramatiq with its Redis broker: `python -m dramatiq bench.peers.dramatiq_app --processes 1`.

Default middleware and default threads (8); the broker's URL comes from
`BENCH_PEER_REDIS_URL`, read at import because dramatiq binds actors to the broker
when they are declared (the bench sets it before importing this module).
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from bench.peers.common import FinishCounter, push_done_sync, push_stamp_sync, redis_url
from bench.peers.driver import Driver, Run


class CountFinished(Middleware):
    """Counts finished no-op messages in the worker; one Redis write when N are done."""

    def __init__(self) -> None:
        self.counter = FinishCounter()

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if message.actor_name == "noop":
            self.counter.started()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if message.actor_name == "noop" and exception is None:
            entry = self.counter.finished()
            if entry is not None:
                push_done_sync(entry)


broker = RedisBroker(url=redis_url())
broker.add_middleware(CountFinished())
dramatiq.set_broker(broker)


@dramatiq.actor
def noop() -> None:
    return None


@dramatiq.actor
def stamp(t0: float) -> None:
    push_stamp_sync(t0)


class DramatiqDriver(Driver):
    name = "dramatiq"
    distributions = ("dramatiq",)

    def command(self) -> list[str]:
        return ["-m", "dramatiq", __name__, "--processes", "1"]

    async def open(self, run: Run) -> None:
        # The bench's client of dramatiq is this module's broker, on the same private Redis.
        assert redis_url() == run.redis_url, "set BENCH_PEER_REDIS_URL before importing"

    async def enqueue_noop(self) -> None:
        noop.send()  # blocking, like every dramatiq client call

    async def enqueue_stamp(self, t0: float) -> None:
        stamp.send(t0)
