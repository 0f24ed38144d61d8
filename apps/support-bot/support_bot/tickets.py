"""Tickets in SQLite, and the triage rules that set their priority, team and next step."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, source_id TEXT UNIQUE,
    app TEXT, kind TEXT NOT NULL, title TEXT NOT NULL, body TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open', priority TEXT, team TEXT, next_step TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
"""
PRIORITIES = ("P1", "P2", "P3", "P4")
_URGENT = re.compile(r"\b(down|outage|urgent|critical|cannot|can't|data loss)\b", re.I)
_ERROR = re.compile(r"\b(error|fail(ed|ing|ure)?|broken|timeout|slow)\b", re.I)
NEXT_STEPS = {
    "down": "Check the app's process and its /api/scheduler/health; restart it if it is gone.",
    "no_worker": "Restart the app's worker (agentsched worker); queued jobs wait in Redis.",
    "failed_executions": "Read the errors in /api/scheduler/executions?status=failed.",
    "request": "Reply to the requester and ask for steps to reproduce.",
}


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def triage(ticket: dict[str, Any]) -> dict[str, str]:
    """Priority, team and next step for a ticket, from its kind and its words."""
    kind, text = ticket["kind"], f"{ticket['title']} {ticket['body']}"
    if kind in ("down", "no_worker") or _URGENT.search(text):
        priority = "P1"
    elif kind == "failed_executions" or _ERROR.search(text):
        priority = "P2"
    else:
        priority = "P3"
    team = "platform" if kind in ("down", "no_worker") else (ticket["app"] or "helpdesk")
    return {
        "priority": priority,
        "team": team,
        "next_step": NEXT_STEPS.get(kind, NEXT_STEPS["request"]),
    }


def escalated(priority: str | None) -> str:
    """One step more urgent (P1 stays P1)."""
    index = PRIORITIES.index(priority) if priority in PRIORITIES else len(PRIORITIES) - 1
    return PRIORITIES[max(index - 1, 0)]


class Tickets:
    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    def open(
        self,
        *,
        source: str,
        source_id: str | None,
        app: str | None,
        kind: str,
        title: str,
        body: str,
    ) -> tuple[int, bool]:
        """Open a ticket; returns (id, created). One ticket per `source_id` (event id)."""
        with self._db() as db:
            if source_id is not None:
                row = db.execute(
                    "SELECT id FROM tickets WHERE source_id = ?", (source_id,)
                ).fetchone()
                if row is not None:
                    return int(row["id"]), False
            stamp = now()
            cursor = db.execute(
                "INSERT INTO tickets (source, source_id, app, kind, title, body, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (source, source_id, app, kind, title[:300], body[:5000], stamp, stamp),
            )
        return int(cursor.lastrowid or 0), True

    def get(self, ticket_id: int) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM tickets WHERE id = ?", (ticket_id,)).fetchone()
        return dict(row) if row else None

    def update(self, ticket_id: int, **values: str) -> None:
        columns = ", ".join(f"{name} = ?" for name in values)  # names come from our code only
        with self._db() as db:
            db.execute(
                f"UPDATE tickets SET {columns}, updated_at = ? WHERE id = ?",
                (*values.values(), now(), ticket_id),
            )

    def find(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = "SELECT * FROM tickets" + (" WHERE status = ?" if status else "")
        with self._db() as db:
            rows = db.execute(
                query + " ORDER BY id DESC LIMIT ?", (*([status] if status else []), limit)
            )
            return [dict(r) for r in rows]

    def stale(self, older_than: dt.timedelta) -> list[dict[str, Any]]:
        """Unresolved tickets not updated for `older_than`."""
        cutoff = (dt.datetime.now(dt.UTC) - older_than).isoformat()
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM tickets WHERE status != 'resolved' AND updated_at < ?", (cutoff,)
            )
            return [dict(r) for r in rows]
