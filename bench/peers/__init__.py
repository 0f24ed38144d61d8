"""The systems bench/bench_queue.py compares, one module each: app, worker entry, driver.

A peer module creates its broker at import from `BENCH_PEER_REDIS_URL` (the worker CLIs
import it by name), so `load` is called only once the bench has set that variable.
"""

from __future__ import annotations

import importlib

from bench.peers.driver import Driver

SYSTEMS = {
    "agentsched": "bench.peers.agentsched_peer:AgentschedDriver",
    "dramatiq": "bench.peers.dramatiq_app:DramatiqDriver",
    "taskiq": "bench.peers.taskiq_app:TaskiqDriver",
    "arq": "bench.peers.arq_app:ArqDriver",
}


def load(name: str) -> Driver:
    module, cls = SYSTEMS[name].split(":")
    driver: Driver = getattr(importlib.import_module(module), cls)()
    return driver
