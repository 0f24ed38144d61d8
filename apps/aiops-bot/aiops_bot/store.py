"""aiops-bot's memory in SQLite: the last state of each app and the alerts raised.

Alerts are raised on changes only (an app going down, new failed executions), so a
platform that stays broken does not flood support-bot with tickets. An app is judged
down only once it has answered a check, or after `startup_grace` seconds from its first
check: apps of a platform that is still starting are not alerted as down. Both count
per `boot` (one per aiops-bot worker process), so a restarted platform, whose apps come
up again at their own pace, gets the same grace.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiops_bot.checks import Report

_SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (app TEXT PRIMARY KEY, up INTEGER NOT NULL,
    failures_seen_until TEXT NOT NULL, report TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, app TEXT NOT NULL, kind TEXT NOT NULL,
    severity TEXT NOT NULL, summary TEXT NOT NULL, details TEXT NOT NULL,
    created_at TEXT NOT NULL, ticket_id TEXT);
CREATE TABLE IF NOT EXISTS first_seen (app TEXT NOT NULL, boot TEXT NOT NULL,
    checked_at TEXT NOT NULL, answered INTEGER NOT NULL, PRIMARY KEY (app, boot));
"""
# On its first check of an app, failures younger than this count as new.
FIRST_LOOKBACK = dt.timedelta(minutes=10)


class Store:
    def __init__(self, path: Path, startup_grace: float = 0.0, boot: str = "") -> None:
        self.path = path
        self.boot = boot
        self.startup_grace = dt.timedelta(seconds=startup_grace)
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

    def since(self, app: str) -> str:
        """The finish time up to which this app's failures were already reported."""
        with self._db() as db:
            row = db.execute(
                "SELECT failures_seen_until FROM apps WHERE app = ?", (app,)
            ).fetchone()
        return row[0] if row else (dt.datetime.now(dt.UTC) - FIRST_LOOKBACK).isoformat()

    def record(self, report: Report) -> tuple[list[dict[str, Any]], bool]:
        """Save a check; return the alerts it raises and whether the app just recovered."""
        with self._db() as db:
            row = db.execute(
                "SELECT up, failures_seen_until FROM apps WHERE app = ?", (report.app,)
            ).fetchone()
            was_up = row is None or bool(row["up"])
            starting = self._starting(db, report)
            alerts = []
            if report.problem and was_up and not starting:
                alerts.append(
                    self._alert(
                        db,
                        report,
                        report.problem,
                        "critical",
                        f"{report.app} is {report.problem.replace('_', ' ')}: {report.detail}",
                    )
                )
            if report.failures:
                alerts.append(
                    self._alert(
                        db,
                        report,
                        "failed_executions",
                        "warning",
                        f"{report.app}: {len(report.failures)} failed execution(s)",
                    )
                )
            seen = report.newest_failure or (
                row["failures_seen_until"] if row else report.checked_at
            )
            db.execute(
                "INSERT OR REPLACE INTO apps (app, up, failures_seen_until, report) "
                "VALUES (?, ?, ?, ?)",
                (report.app, report.problem is None or starting, seen, json.dumps(report.__dict__)),
            )
        return alerts, report.problem is None and not was_up

    def _starting(self, db: sqlite3.Connection, report: Report) -> bool:
        """True while `report.app` has never answered and is still within its grace."""
        row = db.execute(
            "SELECT checked_at, answered FROM first_seen WHERE app = ? AND boot = ?",
            (report.app, self.boot),
        ).fetchone()
        answered = report.problem is None or bool(row and row["answered"])
        first = row["checked_at"] if row else report.checked_at
        db.execute(
            "INSERT OR REPLACE INTO first_seen (app, boot, checked_at, answered) "
            "VALUES (?, ?, ?, ?)",
            (report.app, self.boot, first, answered),
        )
        waited = dt.datetime.fromisoformat(report.checked_at) - dt.datetime.fromisoformat(first)
        return not answered and waited < self.startup_grace

    def _alert(
        self, db: sqlite3.Connection, report: Report, kind: str, severity: str, summary: str
    ) -> dict[str, Any]:
        alert = {
            "alert_id": uuid.uuid4().hex,
            "app": report.app,
            "kind": kind,
            "severity": severity,
            "summary": summary[:500],
            "url": report.url,
            "created_at": report.checked_at,
            "details": {"detail": report.detail, "failures": report.failures[:10]},
        }
        db.execute(
            "INSERT INTO alerts (id, app, kind, severity, summary, details, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                alert["alert_id"],
                report.app,
                kind,
                severity,
                alert["summary"],
                json.dumps(alert["details"]),
                report.checked_at,
            ),
        )
        return alert

    def acknowledge(self, alert_id: str, ticket_id: str) -> bool:
        """Link an alert to the support ticket opened for it."""
        with self._db() as db:
            cursor = db.execute(
                "UPDATE alerts SET ticket_id = ? WHERE id = ?", (ticket_id, alert_id)
            )
        return cursor.rowcount == 1

    def status(self) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT app, up, report FROM apps ORDER BY app").fetchall()
        return [
            {"app": r["app"], "up": bool(r["up"]), "last_check": json.loads(r["report"])}
            for r in rows
        ]

    def alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM alerts ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)
            )
            return [dict(r) | {"details": json.loads(r["details"])} for r in rows]
