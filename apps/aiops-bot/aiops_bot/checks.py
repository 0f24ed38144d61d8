"""Checking one app: its scheduler health and its failed executions since the last check."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Report:
    """What one check of one app found; `problem` is None when the app is healthy."""

    app: str
    url: str
    checked_at: str
    problem: str | None = None  # "down" | "no_worker"
    detail: str = ""
    health: dict[str, Any] | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def newest_failure(self) -> str | None:
        times = [f["finished_at"] for f in self.failures]
        return max(times, key=parse_time) if times else None


def parse_time(value: str) -> dt.datetime:
    """An ISO 8601 time as an aware datetime (naive ones are UTC)."""
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _failure(item: dict[str, Any]) -> dict[str, Any]:
    error = (item.get("error") or "").strip().splitlines()
    return {
        "id": item["id"],
        "function": item.get("function"),
        "finished_at": item.get("finished_at"),
        "error_kind": item.get("error_kind"),
        "error": error[0][:200] if error else "",
    }


async def _failures(client: httpx.AsyncClient, url: str, since: str) -> list[dict[str, Any]]:
    response = await client.get(
        f"{url}/api/scheduler/executions",
        params={"status": "failed", "sort": "finished_at", "order": "desc", "limit": 50},
    )
    response.raise_for_status()
    after = parse_time(since)
    return [
        _failure(item)
        for item in response.json()["items"]
        if item.get("finished_at") and parse_time(item["finished_at"]) > after
    ]


async def check_app(client: httpx.AsyncClient, app: str, url: str, since: str) -> Report:
    """Health of `app` at `url`, and its executions that failed after `since` (ISO time)."""
    report = Report(app=app, url=url, checked_at=dt.datetime.now(dt.UTC).isoformat())
    try:
        response = await client.get(f"{url}/api/scheduler/health")
        report.health = response.json() if response.content else None
    except (httpx.HTTPError, ValueError) as exc:
        report.problem, report.detail = (
            "down",
            f"{type(exc).__name__}: {exc}"[:300] or "unreachable",
        )
        return report
    if response.status_code != 200:
        report.problem, report.detail = "down", f"health answered HTTP {response.status_code}"
        return report
    if not (report.health or {}).get("workers", {}).get("live"):
        report.problem, report.detail = "no_worker", "no worker of this app renewed its heartbeat"
    try:
        report.failures = await _failures(client, url, since)
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        report.detail = (report.detail + f"; executions unreadable: {exc}").strip("; ")[:300]
    return report
