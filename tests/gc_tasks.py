"""A task reporting the worker process' garbage collector state (tests/test_worker_process.py)."""

import gc

from agentsched import task


@task(name="tests.gc_frozen")
async def gc_frozen() -> int:
    """How many objects the worker process has frozen out of the collector's scans."""
    return gc.get_freeze_count()


@task(name="tests.gc_young")
async def gc_young() -> int:
    """The worker process's young-generation threshold."""
    return gc.get_threshold()[0]
