"""What the Redis server itself is set to, checked once at start-up.

A Redis without persistence forgets every queued job when it restarts, and one that
evicts keys under memory pressure drops jobs silently. The reconciler heals both from
SQL, but an operator should know: the worker and the API each log one warning line,
and `/health` shows the same facts. The embedded Redis of `agentsched dev` keeps
nothing on purpose and is not warned about.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import redis.asyncio as aioredis

log = logging.getLogger("agentsched.redis")
# Set by `agentsched dev` for the processes it starts on its embedded Redis.
EMBEDDED_ENV = "AGENTSCHED_EMBEDDED_REDIS"


async def redis_durability(client: aioredis.Redis) -> dict[str, Any]:
    """{"persistence": "aof" | "rdb" | "aof+rdb" | "none" | "unknown", "maxmemory_policy": ...}."""
    facts: dict[str, Any] = {"persistence": "unknown", "maxmemory_policy": "unknown"}
    try:
        info = await client.info("persistence")
        aof = bool(int(info.get("aof_enabled", 0)))
    except Exception:
        return facts
    rdb: bool | None = None
    try:
        save = await client.config_get("save")
        rdb = bool(str(save.get("save", "")).strip())
    except Exception:  # CONFIG may be renamed or forbidden on a managed Redis
        rdb = None
    kinds = [name for name, on in (("aof", aof), ("rdb", rdb)) if on]
    facts["persistence"] = "+".join(kinds) if kinds else ("none" if rdb is False else "unknown")
    try:
        memory = await client.info("memory")
        facts["maxmemory_policy"] = str(memory.get("maxmemory_policy", "unknown"))
    except Exception:
        pass
    return facts


def durability_warning(facts: dict[str, Any]) -> str | None:
    """One line saying what can lose jobs, or None when nothing can."""
    problems = []
    if facts.get("persistence") == "none":
        problems.append("no persistence (neither AOF nor RDB): a restart loses every queued job")
    policy = facts.get("maxmemory_policy")
    if policy not in ("noeviction", "unknown", None):
        problems.append(f"maxmemory-policy is {policy}, not noeviction: it may evict jobs")
    if not problems:
        return None
    return (
        "Redis has "
        + "; ".join(problems)
        + " (the reconciler re-enqueues from SQL; see the README's 'Redis faults')"
    )


async def warn_if_redis_can_lose_jobs(client: aioredis.Redis) -> None:
    """Log one warning line when this Redis can lose jobs (not for `agentsched dev`'s)."""
    if os.environ.get(EMBEDDED_ENV) == "1":
        return
    line = durability_warning(await redis_durability(client))
    if line:
        log.warning("%s", line)
