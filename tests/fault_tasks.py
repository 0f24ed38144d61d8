"""Tasks for Redis fault tests: a ledger of starts and an idempotent, counted side effect."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from agentsched import task


@task(name="faults.ledger", max_retries=2, timeout=60)
async def ledger(n: int, ledger: str, seconds: float) -> int:
    """Record the start, work, then commit the effect of `n` (one file per commit)."""
    root = Path(ledger)
    with (root / "starts").open("a") as starts:
        starts.write(f"{n} {os.getpid()}\n")
    await asyncio.sleep(seconds)
    # The effect itself is idempotent (the result is the same however often it runs);
    # each commit leaves its own file so a test can count them.
    (root / f"commit-{n}-{uuid.uuid4().hex[:8]}").write_text(str(os.getpid()))
    return n


def commits(ledger: Path) -> dict[int, int]:
    """How many times each n's effect was committed."""
    counts: dict[int, int] = {}
    for path in ledger.glob("commit-*"):
        n = int(path.name.split("-")[1])
        counts[n] = counts.get(n, 0) + 1
    return counts
