"""Schedules in words for people: "every 5 minutes", "at 07:00 on mon-fri (Europe/Berlin)".

Pure functions, no I/O. Common crontab shapes get a sentence; anything else reads
as "cron <expression>", which is never wrong.
"""

from __future__ import annotations

_DAYS = {"*": "every day", "mon-fri": "on weekdays", "1-5": "on weekdays"}
_UNITS = ((86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second"))


def interval_words(seconds: float) -> str:
    """ "every 30 seconds", "every 5 minutes", "every hour", "every 90.5 seconds"."""
    for size, unit in _UNITS:
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"every {unit}" if count == 1 else f"every {count} {unit}s"
    return f"every {seconds:g} seconds"


def _two(field: str) -> str | None:
    return field.zfill(2) if field.isdigit() and len(field) <= 2 else None


def cron_words(expr: str) -> str:
    """A sentence for common crontab shapes, else "cron <expr>"."""
    fields = expr.split()
    if len(fields) != 5:
        return f"cron {expr}"
    minute, hour, dom, month, dow = fields
    if dom != "*" or month != "*":
        return f"cron {expr}"
    days = _DAYS.get(dow.lower(), f"on {dow.lower()}")
    if minute == "*" and hour == "*":
        return "every minute" if dow == "*" else f"every minute {days}"
    if minute.startswith("*/") and hour == "*" and minute[2:].isdigit():
        return f"every {int(minute[2:])} minutes" + ("" if dow == "*" else f" {days}")
    mm, hh = _two(minute), _two(hour)
    if mm is not None and hour == "*":
        return f"at minute {int(minute)} of every hour" + ("" if dow == "*" else f" {days}")
    if mm is not None and hh is not None:
        return f"at {hh}:{mm} {days}"
    return f"cron {expr}"


def schedule_words(cron: str | None, interval: float | None, timezone: str) -> str:
    """The schedule's timing in words; cron ones name their timezone unless it is UTC."""
    if interval is not None:
        return interval_words(interval)
    if cron is None:
        return "no timing"
    words = cron_words(cron)
    return words if timezone == "UTC" else f"{words} ({timezone})"
